"""Chapter recipe for mmcourse.vit (being moved here from the model module)."""

WEIGHTS: dict = {}
REBUILDS: dict = {}
