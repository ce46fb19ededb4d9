"""Chapter recipe for mmcourse.tokenizer (being moved here from the model module)."""

WEIGHTS: dict = {}
REBUILDS: dict = {}
