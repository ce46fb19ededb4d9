"""Chapter recipe for mmcourse.ar (being moved here from the model module)."""

WEIGHTS: dict = {}
REBUILDS: dict = {}
