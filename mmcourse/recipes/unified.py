"""Chapter recipe for mmcourse.unified (being moved here from the model module)."""

WEIGHTS: dict = {}
REBUILDS: dict = {}
