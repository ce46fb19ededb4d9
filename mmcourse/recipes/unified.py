"""Chapter recipe for mmcourse.unified (being moved here from the model module)."""

from mmcourse.checkpoints import Weights
from mmcourse.transformer import GPT, GPTConfig


def _gpt(config: dict) -> GPT:
    return GPT(GPTConfig(**config))


WEIGHTS = {
    "unified": Weights(
        "unified_shapes.pt", GPT, command="python -m mmcourse.train unified", build=_gpt, half=True
    )
}
REBUILDS: dict = {}
