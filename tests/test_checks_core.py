"""The checker framework: pass line, failure messages, stubs, crashes, the count of checks."""

from __future__ import annotations

import pytest
import torch

from mmcourse.checks import Check, ExerciseFailed, exercise
from mmcourse.checks._core import OpSpy, _Failure, gradients, leaves


@exercise("9.9", "double a tensor")
def check_double(check: Check) -> None:
    x = torch.arange(4.0, device=check.device)
    check.close(check.call(x), 2 * x, "doubles arange(4)", hint="multiply by two")
    check.equal(
        check.call(torch.tensor([1], device=check.device)).dtype,
        torch.int64,
        "keeps an integer dtype",
    )
    check.raises(TypeError, "rejects a list", [1.0, 2.0], hint="check isinstance(x, Tensor)")


def _double(x):
    if not isinstance(x, torch.Tensor):
        raise TypeError("x must be a tensor")
    return 2 * x


def test_reference_passes_with_one_line(capsys):
    check_double(_double, device="cpu")
    assert capsys.readouterr().out == "✓ Exercise 9.9 passed (3 checks)\n"


def test_checker_keeps_its_metadata():
    assert (check_double.number, check_double.title) == ("9.9", "double a tensor")
    assert check_double.__name__ == "check_double"


def _fail(candidate) -> str:
    with pytest.raises(ExerciseFailed) as info:
        check_double(candidate, device="cpu")
    assert isinstance(info.value, AssertionError)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    return str(info.value)


def test_wrong_values_name_the_check_expected_got_and_hint():
    message = _fail(lambda x: 3 * x if isinstance(x, torch.Tensor) else _double(x))
    assert (
        message.splitlines()[0]
        == 'Exercise 9.9 (double a tensor) failed check 1, "doubles arange(4)":'
    )
    assert "expected: the reference values" in message
    assert "3 of 4 values differ; at [1] expected 2, got 3" in message
    assert "hint:     multiply by two" in message


def test_wrong_shape_dtype_device_and_type_are_described():
    assert "expected: shape (4,)\n  got:      shape (1, 4)" in _fail(lambda x: _double(x)[None])
    assert "dtype torch.float32" in _fail(lambda x: _double(x).double())
    assert "a list" in _fail(lambda x: _double(x).tolist())


def test_the_stub_is_not_implemented_yet():
    def stub(x):
        # YOUR CODE HERE
        raise NotImplementedError()

    message = _fail(stub)
    assert "Exercise 9.9 (double a tensor): not implemented yet" in message
    assert "raise NotImplementedError()" in message


def test_a_crash_is_one_line_not_a_traceback():
    message = _fail(lambda x: x @ torch.ones(3, device=x.device))  # (4,) @ (3,): a crash
    assert (
        'failed check 1, "runs on (tensor of shape (4,), dtype torch.float32, on cpu)"' in message
    )
    assert "it raised RuntimeError: " in message
    assert "Traceback" not in message and len(message.splitlines()) == 4


def test_a_missing_error_and_a_wrong_error_are_reported():
    message = _fail(lambda x: torch.as_tensor(x) * 2)
    assert 'failed check 3, "rejects a list"' in message
    assert "expected: TypeError\n  got:      no error; it returned tensor of shape (2,)" in message
    message = _fail(lambda x: _double(x) if isinstance(x, torch.Tensor) else [][0])
    assert "got:      IndexError: list index out of range" in message


def test_a_result_the_checks_cannot_inspect_still_gives_a_message():
    @exercise("9.8", "anything")
    def check_shape(check: Check) -> None:
        check.that(check.call().shape == (2,), "has shape (2,)", expected="(2,)", got="?")

    with pytest.raises(ExerciseFailed, match=r"could not be checked \(AttributeError: "):
        check_shape(lambda: None, device="cpu")


def test_passing_a_call_instead_of_the_function_is_explained():
    with pytest.raises(ExerciseFailed, match="without parentheses"):
        check_double(_double(torch.ones(1)), device="cpu")


def test_exact_equality_and_tolerances():
    check = Check(lambda: None, torch.device("cpu"))
    check.close(torch.tensor([1.0 + 1e-7]), torch.tensor([1.0]), "within tolerance")
    with pytest.raises(_Failure, match="values differ"):
        check.equal(torch.tensor([1.0 + 1e-6]), torch.tensor([1.0]), "exact")
    check.equal({"a": 1}, {"a": 1}, "dicts")
    with pytest.raises(_Failure, match="values differ"):
        check.close(torch.tensor([float("nan")]), torch.tensor([1.0]), "nan is not 1")
    with pytest.raises(_Failure, match="a tuple"):
        check.equal((1, 2), [1, 2], "a tuple is not a list")
    assert check.count == 5


def test_default_device_comes_from_the_environment(monkeypatch, capsys):
    seen = []

    @exercise("9.7", "device")
    def check_device(check: Check) -> None:
        seen.append(check.device)

    monkeypatch.setenv("MMCOURSE_DEVICE", "cpu")
    check_device(lambda: None)
    assert seen == [torch.device("cpu")]
    assert "passed (0 checks)" in capsys.readouterr().out


def test_gradient_helpers_report_missing_gradients_as_zeros():
    a, b = leaves(torch.ones(2), torch.ones(3))
    assert a.requires_grad and a.is_leaf
    grads = gradients((3 * a).sum(), [a, b])
    assert torch.equal(grads[0], torch.full((2,), 3.0)) and torch.equal(grads[1], torch.zeros(3))
    assert [g.sum().item() for g in gradients(a.detach(), [a, b])] == [0.0, 0.0]


def test_op_spy_sees_operations_and_the_largest_temporary():
    z, codebook = torch.randn(5, 3), torch.randn(4, 3)
    with OpSpy() as spy:
        (z[:, None, :] - codebook[None]).pow(2).sum(-1)
    assert spy.largest == 5 * 4 * 3 and "sub" in spy.names


def test_a_notebook_shows_the_message_alone():
    """In a kernel (JupyterLab, nbval, nbgrader), a failed check's output is the message, not
    the frames of mmcourse/checks/ above it."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    source = "from mmcourse.checks import ch00\nch00.check_parse_caption(lambda caption: {})"
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    nbclient.NotebookClient(notebook, timeout=120, allow_errors=True).execute()
    (error,) = [o for o in notebook.cells[0].outputs if o.output_type == "error"]
    shown = "\n".join(error.traceback)
    assert "ExerciseFailed" in shown and "Exercise 0.1 (read a caption) failed check" in shown
    assert "_core.py" not in shown and "def checker" not in shown, shown

