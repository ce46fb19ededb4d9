"""Chapter recipe for mmcourse.diffusion (being moved here from the model module)."""

WEIGHTS: dict = {}
REBUILDS: dict = {}
