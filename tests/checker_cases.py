"""Helpers shared by the checker tests (tests/test_checks_chNN.py): a stub exactly like the
student notebooks', one-liners for "the reference passes" and "this wrong version fails", and
the wrong kinds of result (container, dtype, shape) every checker must answer with "expected …,
got …"."""

from __future__ import annotations

import pytest
import torch

from mmcourse.checks import ExerciseFailed


def stub(*args, **kwargs):
    # YOUR CODE HERE
    raise NotImplementedError()


def passes(checker, candidate, capsys, number: str) -> None:
    """The checker accepts `candidate` and prints its one ✓ line."""
    checker(candidate)
    assert capsys.readouterr().out.startswith(f"✓ Exercise {number} passed (")


def rejects(checker, wrong, message: str) -> None:
    """The checker raises ExerciseFailed on `wrong`, with a message matching the regex."""
    with pytest.raises(ExerciseFailed, match=message):
        checker(wrong)


def case_id(value) -> str:
    """pytest ids for (wrong version, message) parameters: the function's name."""
    return getattr(value, "__name__", "message")


def devices_seen(checker, reference, device: str, capsys) -> set:
    """Run `checker(…, device=device)` on a spy of `reference`; the checker must pass. Returns
    the devices of every tensor the checker handed to the candidate."""
    seen: set = set()

    def spy(*args, **kwargs):
        seen.update(a.device for a in args if hasattr(a, "device"))
        return reference(*args, **kwargs)

    checker(spy, device=device)
    assert "✓" in capsys.readouterr().out
    return seen


# --- a wrong kind of result: the failure says what was expected and what came -----------------

EXPECTED_AND_GOT = r"failed check \d+, \"[^\n]*\":\n  expected: [^\n]+\n  got:      "


def _each_part(result, tensor, number):
    """`result` with `tensor` applied to every tensor and `number` to every int inside it,
    through tuples (named ones too), lists and dicts; anything else comes back as it is."""
    if isinstance(result, torch.Tensor):
        return tensor(result)
    if isinstance(result, int):
        return number(result)
    if isinstance(result, dict):
        return {k: _each_part(v, tensor, number) for k, v in result.items()}
    if isinstance(result, tuple) and hasattr(result, "_fields"):  # a NamedTuple: Segment
        return type(result)(*(_each_part(part, tensor, number) for part in result))
    if isinstance(result, list | tuple):
        return type(result)(_each_part(part, tensor, number) for part in result)
    return result


WRONG_KINDS = {  # a reference's result, returned in the wrong container, dtype or shape
    "None": lambda result: None,
    "a 1-tuple": lambda result: (result,),
    "lists": lambda result: _each_part(result, torch.Tensor.tolist, lambda n: [n]),
    "float64": lambda result: _each_part(result, torch.Tensor.double, float),
    "an extra dim": lambda result: _each_part(result, lambda x: x[None], lambda n: (n,)),
}


def rejects_wrong_kind(checker, reference, kind: str) -> None:
    """The checker fails `reference`'s result returned as WRONG_KINDS[kind] with a failing check
    that says what it expected and what came: never the catch-all "could not be checked"."""

    def wrong(*args, **kwargs):
        return WRONG_KINDS[kind](reference(*args, **kwargs))

    rejects(checker, wrong, EXPECTED_AND_GOT)
