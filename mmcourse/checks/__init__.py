"""Exercise checkers, one module per chapter: `checks.ch00.check_parse_caption(parse_caption)`.

Each checker runs a learner's function on fixed seeded inputs against the package's reference,
then on properties (shapes, dtypes, devices, gradients, clean errors), and prints one
`✓ Exercise N.k passed (n checks)` line or raises `ExerciseFailed` saying what went wrong.
"""

from mmcourse.checks import ch00
from mmcourse.checks._core import Check, ExerciseFailed, exercise

__all__ = ["Check", "ExerciseFailed", "ch00", "exercise"]
