"""checks.learner_or_reference and checks.finished: demo cells after an unfinished exercise say
which exercise they need instead of ending in a bare NotImplementedError, without hiding a
learner's bug or changing what a checker says."""

from __future__ import annotations

import runpy

import pytest
import torch

from mmcourse import checks, diffusion

# What a learner's notebook holds: nbgrader's stub, a half-done answer that still reaches the stub's
# line, an answer with a real bug, one that trips over torch, one that is finished.
CELLS = '''
def stub(eps_cond, eps_uncond, scale):
    """ε̂ = ε_u + s (ε_c − ε_u)."""
    # YOUR CODE HERE
    raise NotImplementedError()


def half_done(eps_cond, eps_uncond, scale):
    difference = eps_cond - eps_uncond
    raise NotImplementedError()


def buggy(eps_cond, eps_uncond, scale):
    return eps_cond.reshape(-1, 7)


def deeper(eps_cond, eps_uncond, scale):
    return helper(eps_cond)


def helper(x):
    raise NotImplementedError("a torch kernel that does not exist for this dtype")


def finished(eps_cond, eps_uncond, scale):
    return eps_uncond + scale * (eps_cond - eps_uncond)


def returns_before_the_stub(eps_cond, eps_uncond, scale):
    return eps_uncond + scale * (eps_cond - eps_uncond)
    raise NotImplementedError()
'''


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> dict:
    """The functions above, defined from a file so that their source can be read, as Jupyter
    keeps every cell's."""
    path = tmp_path_factory.mktemp("notebook") / "cells.py"
    path.write_text(CELLS, encoding="utf-8")
    return runpy.run_path(str(path))


def _inputs() -> tuple[torch.Tensor, torch.Tensor, float]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g), 3.0


@pytest.mark.parametrize("name", ["stub", "half_done"])
def test_the_stub_runs_the_reference_with_one_note(cells, name, capsys):
    combine = checks.learner_or_reference(cells[name], diffusion.cfg_combine, "Exercise 4.6")
    args = _inputs()
    for _ in range(3):
        assert torch.equal(combine(*args), diffusion.cfg_combine(*args))
    assert capsys.readouterr().out == (
        "Exercise 4.6 is not finished yet: this cell uses the package's reference "
        "mmcourse.diffusion.cfg_combine instead\n"
    )


def test_a_finished_exercise_runs_the_learners_function_silently(cells, capsys):
    calls = []
    combine = checks.learner_or_reference(cells["finished"], calls.append, "Exercise 4.6")
    args = _inputs()
    assert torch.equal(combine(*args), diffusion.cfg_combine(*args))
    assert combine.__name__ == "finished"
    assert calls == [] and capsys.readouterr().out == ""


def test_a_real_bug_is_not_hidden(cells, capsys):
    combine = checks.learner_or_reference(cells["buggy"], diffusion.cfg_combine, "Exercise 4.6")
    with pytest.raises(RuntimeError, match="invalid for input of size"):
        combine(*_inputs())
    assert capsys.readouterr().out == ""


def test_not_implemented_from_deeper_down_is_the_learners_to_see(cells, capsys):
    combine = checks.learner_or_reference(cells["deeper"], diffusion.cfg_combine, "Exercise 4.6")
    with pytest.raises(NotImplementedError, match="does not exist for this dtype"):
        combine(*_inputs())
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("graded", ["", "1"])
def test_inside_a_checker_the_stub_stays_a_stub(cells, graded, monkeypatch, capsys):
    """A wrapped stub handed to a checker fails as not implemented: grading is unchanged."""
    monkeypatch.setenv("MMCOURSE_GRADED", graded)
    combine = checks.learner_or_reference(cells["stub"], diffusion.cfg_combine, "Exercise 4.6")
    with pytest.raises(checks.ExerciseFailed, match="not implemented yet"):
        checks.ch04.check_cfg_combine(combine)
    assert "is not finished yet" not in capsys.readouterr().out


def test_only_functions_are_accepted():
    with pytest.raises(TypeError, match="must be functions"):
        checks.learner_or_reference(None, diffusion.cfg_combine, "Exercise 4.6")
    with pytest.raises(TypeError, match="must be functions"):
        checks.learner_or_reference(diffusion.cfg_combine, "reference", "Exercise 4.6")


@pytest.mark.parametrize("name", ["stub", "half_done", "returns_before_the_stub"])
def test_finished_is_false_while_the_stub_line_is_there(cells, name, capsys):
    assert checks.finished(cells[name], "Exercise 9.1") is False
    assert capsys.readouterr().out == (
        "Exercise 9.1 is not finished yet, so this cell skips what needs it: replace "
        f"`raise NotImplementedError()` in {name} with your code, run that cell, then this one.\n"
    )


@pytest.mark.parametrize("name", ["finished", "buggy", "deeper"])
def test_finished_is_true_once_the_stub_line_is_gone(cells, name, capsys):
    assert checks.finished(cells[name], "Exercise 9.1") is True
    assert capsys.readouterr().out == ""


def test_finished_runs_what_has_no_readable_source(capsys):
    namespace: dict = {}
    exec("def no_file(x):\n    raise NotImplementedError()\n", namespace)
    assert checks.finished(namespace["no_file"], "Exercise 9.1") is True
    assert checks.finished(len, "Exercise 9.1") is True
    assert capsys.readouterr().out == ""
