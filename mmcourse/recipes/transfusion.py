"""Chapter recipe for mmcourse.transfusion (being moved here from the model module)."""

WEIGHTS: dict = {}
REBUILDS: dict = {}
