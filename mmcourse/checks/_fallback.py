"""Demo cells that keep running while an exercise is unfinished.

A figure after Exercise 4.1 calls the learner's `q_sample`. While that is still nbgrader's stub,
the cell would end in a bare `NotImplementedError`. Two ways out, both saying which exercise:

    q = checks.learner_or_reference(q_sample, diffusion.q_sample, "Exercise 4.1")
    q(x0, t, alpha_bar, eps)   # the learner's function; the package's, with a note, while a stub

    if checks.finished(distance_tile, "Exercise 9.1"):   # no reference to stand in: skip
        ...

Only the stub stands aside: any other error, the learner's real bug included, comes through as it
is, and inside a checker the learner's function is never replaced, so grading is unchanged.
"""

from __future__ import annotations

import ast
import functools
import inspect
import os
import sys
import textwrap
from collections.abc import Callable
from typing import Any, TypeVar

Result = TypeVar("Result")

_CHECKS = os.path.dirname(os.path.abspath(__file__)) + os.sep  # …/mmcourse/checks/


def learner_or_reference(
    learner: Callable[..., Result], reference: Callable[..., Result], exercise: str
) -> Callable[..., Result]:
    """A function that calls `learner`, or `reference` while `learner` is still the stub.

    "The stub" means the NotImplementedError was raised by `learner`'s own body (nbgrader's
    `raise NotImplementedError()`); one raised deeper, by torch or by a helper, is the learner's
    to see. The first time the reference stands in, one line says so, naming `exercise` (e.g.
    "Exercise 4.1") and the reference."""
    if not callable(learner) or not callable(reference):
        raise TypeError("learner and reference must be functions")
    own_code = getattr(inspect.unwrap(learner), "__code__", None)
    noted = False

    @functools.wraps(learner)
    def learner_or_reference(*args: Any, **kwargs: Any) -> Result:
        nonlocal noted
        try:
            return learner(*args, **kwargs)
        except NotImplementedError as error:
            if _raised_in(error) is not own_code or _inside_a_checker():
                raise
        if not noted:
            noted = True
            print(
                f"{exercise} is not finished yet: this cell uses the package's reference "
                f"{_name(reference)} instead"
            )
        return reference(*args, **kwargs)

    return learner_or_reference


def finished(learner: Callable, exercise: str) -> bool:
    """False, with one line saying which exercise the cell skips a part for, while `learner`
    still holds the stub's `raise NotImplementedError()`; True otherwise (also when its source
    cannot be read: then it simply runs). For cells with no reference that could stand in."""
    if not _holds_stub(learner):
        return True
    name = getattr(learner, "__name__", learner)
    print(
        f"{exercise} is not finished yet, so this cell skips what needs it: replace "
        f"`raise NotImplementedError()` in {name} with your code, run that cell, then this one."
    )
    return False


def _raised_in(error: BaseException) -> Any:
    """The code object of the function whose line raised `error` (its innermost frame)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code if tb is not None else None


def _inside_a_checker() -> bool:
    """Whether a checker (code under mmcourse/checks/ other than this module) is running us: a
    candidate wrapped in `learner_or_reference` must fail its check as the stub it is."""
    frame = sys._getframe(2)
    while frame is not None:
        file = frame.f_code.co_filename
        if file.startswith(_CHECKS) and file != __file__:
            return True
        frame = frame.f_back
    return False


def _holds_stub(learner: Callable) -> bool:
    """Whether the function's body still has nbgrader's `raise NotImplementedError()` at its top
    level (its source as Jupyter keeps it for every cell)."""
    try:
        source = textwrap.dedent(inspect.getsource(inspect.unwrap(learner)))
        body = ast.parse(source).body[0].body
    except (OSError, TypeError, SyntaxError, IndexError, AttributeError):
        return False
    return any(_is_stub_raise(statement) for statement in body)


def _is_stub_raise(statement: ast.stmt) -> bool:
    if not isinstance(statement, ast.Raise) or statement.exc is None:
        return False
    exc = statement.exc
    if isinstance(exc, ast.Call) and not (exc.args or exc.keywords):
        exc = exc.func
    return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"


def _name(reference: Callable) -> str:
    function = getattr(reference, "__func__", reference)  # a bound method: its function
    module, name = getattr(function, "__module__", None), getattr(function, "__qualname__", None)
    return f"{module}.{name}" if module and name else repr(reference)
