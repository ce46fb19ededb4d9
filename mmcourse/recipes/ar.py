"""Chapter recipe for mmcourse.ar (being moved here from the model module)."""

from mmcourse.checkpoints import Weights
from mmcourse.transformer import GPT, GPTConfig


def _gpt(config: dict) -> GPT:
    return GPT(GPTConfig(**config))


_COMMAND = "python -m mmcourse.train ar"
WEIGHTS = {
    "ar": Weights("ar_shapes.pt", GPT, command=_COMMAND, build=_gpt, half=True),
    "ar_early": Weights("ar_shapes_early.pt", GPT, command=_COMMAND, build=_gpt, half=True),
    "ar_noisy": Weights(
        "ar_shapes_noisy.pt",
        GPT,
        command="python -m mmcourse.train ar_noisy",
        build=_gpt,
        half=True,
    ),
}
REBUILDS: dict = {}
