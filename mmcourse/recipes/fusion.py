"""Chapter recipe for mmcourse.fusion (being moved here from the model module)."""

from mmcourse.checkpoints import Weights
from mmcourse.fusion import CLIP, Captioner
from mmcourse.vit import ViT


def _captioner(config: dict) -> Captioner:
    return Captioner(ViT(**config.pop("vision")), **config)


WEIGHTS = {
    "clip": Weights("clip_shapes.pt", CLIP, command="python -m mmcourse.train clip"),
    "captioner": Weights(
        "captioner_shapes.pt",
        Captioner,
        command="python -m mmcourse.train captioner",
        build=_captioner,
    ),
}
REBUILDS: dict = {}
