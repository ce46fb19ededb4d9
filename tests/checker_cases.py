"""Helpers shared by the checker tests (tests/test_checks_chNN.py): a stub exactly like the
student notebooks', and one-liners for "the reference passes" and "this wrong version fails"."""

from __future__ import annotations

import pytest

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
