"""Exercise checkers, one module per chapter: `checks.ch00.check_parse_caption(parse_caption)`.

Each checker runs a learner's function on fixed seeded inputs against the package's reference,
then on properties (shapes, dtypes, devices, gradients, clean errors), and prints one
`✓ Exercise N.k passed (n checks)` line or raises `ExerciseFailed` saying what went wrong.
Chapter modules `chNN` are imported on first use, so `checks.ch01` works after
`from mmcourse import checks`.

Demo cells use `learner_or_reference` and `finished` so that an unfinished exercise ends in one
line naming it, not in a bare NotImplementedError (see `_fallback`).
"""

import importlib
import re
from types import ModuleType

from mmcourse.checks._core import Check, ExerciseFailed, exercise
from mmcourse.checks._fallback import finished, learner_or_reference

__all__ = ["Check", "ExerciseFailed", "exercise", "finished", "learner_or_reference"]


def __getattr__(name: str) -> ModuleType:
    if re.fullmatch(r"ch\d\d", name):
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
