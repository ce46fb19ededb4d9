"""Chapter recipe for mmcourse.fusion (being moved here from the model module)."""

WEIGHTS: dict = {}
REBUILDS: dict = {}
