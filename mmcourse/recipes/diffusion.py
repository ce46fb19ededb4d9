"""Chapter recipe for mmcourse.diffusion (being moved here from the model module)."""

from mmcourse.checkpoints import Weights
from mmcourse.unet import UNet

_COMMAND = "python -m mmcourse.train diffusion"
_EXTRAS = ("schedule", "latent_scale")  # how to sample and decode, kept beside the UNet's config
WEIGHTS = {
    "diffusion": Weights("diffusion_shapes.pt", UNet, command=_COMMAND, extras=_EXTRAS),
    "diffusion_latent": Weights(
        "diffusion_latent_shapes.pt", UNet, command=_COMMAND, extras=_EXTRAS
    ),
}
REBUILDS: dict = {}
