"""Chapter recipe for mmcourse.vit (being moved here from the model module)."""

from mmcourse.checkpoints import Weights
from mmcourse.vit import ViT

WEIGHTS = {"vit": Weights("vit_digits.pt", ViT, command="python -m mmcourse.train vit")}
REBUILDS: dict = {}
