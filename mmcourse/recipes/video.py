"""Chapter recipe for mmcourse.video (being moved here from the model module)."""

WEIGHTS: dict = {}
REBUILDS: dict = {}
