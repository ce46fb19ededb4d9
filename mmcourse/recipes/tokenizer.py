"""Chapter recipe for mmcourse.tokenizer (being moved here from the model module)."""

from mmcourse.checkpoints import Weights
from mmcourse.tokenizer import VQVAE

WEIGHTS = {
    "tokenizer": Weights("tokenizer.pt", VQVAE, command="python -m mmcourse.train tokenizer")
}
REBUILDS: dict = {}
