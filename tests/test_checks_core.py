"""The checker framework: pass line, failure messages, stubs, crashes, the count of checks."""

from __future__ import annotations

import re

import pytest
import torch

from mmcourse.checks import Check, ExerciseFailed, exercise
from mmcourse.checks._core import _DEVICE_HINT, _DTYPE_HINT, OpSpy, _Failure, gradients, leaves


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
    message = _fail(lambda x: x + 1 if isinstance(x, torch.Tensor) else _double(x))
    assert (
        message.splitlines()[0]
        == 'Exercise 9.9 (double a tensor) failed check 1, "doubles arange(4)":'
    )
    assert "expected: the reference values" in message
    assert "3 of 4 values differ; at [0] expected 0, got 1" in message
    assert "hint:     multiply by two" in message


def test_wrong_shape_dtype_device_and_type_are_described():
    assert "expected: shape (4,)\n  got:      shape (1, 4)" in _fail(lambda x: _double(x)[None])
    assert "dtype torch.float32" in _fail(lambda x: _double(x).double())
    assert "a list" in _fail(lambda x: _double(x).tolist())


def test_a_wrong_dtype_gets_the_dtype_hint_not_the_hint_about_values():
    message = _fail(lambda x: _double(x).double())
    assert "expected: dtype torch.float32\n  got:      dtype torch.float64\n" in message
    assert message.endswith(f"  hint:     {_DTYPE_HINT}") and "multiply by two" not in message


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
    monkeypatch.setenv("MMCOURSE_DEVICE", "cpu:0")  # named with an index: as tensors report it
    check_device(lambda: None)
    assert seen == [torch.device("cpu")] * 2
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


# --- what a wrong result looks like ---------------------------------------------------------


def _diagnosis(got, expected, **kwargs) -> str:
    """The "looks like" of `close` (or `equal`, with exact=True) on a wrong `got`."""
    check = Check(lambda: None, torch.device("cpu"))
    compare = check.equal if kwargs.pop("exact", False) else check.close
    with pytest.raises(_Failure) as info:
        compare(got, expected, "values", **kwargs)
    return info.value.diagnosis


_G = torch.Generator().manual_seed(0)
_Z, _CODES = torch.randn(6, 4, generator=_G), torch.randn(5, 4, generator=_G)
_SQUARED = torch.cdist(_Z, _CODES) ** 2  # (6, 5)
_CUBE = torch.randn(4, 3, 4, generator=_G)


@pytest.mark.parametrize(
    ("got", "expected", "kwargs", "looks_like"),
    [
        (torch.cdist(_Z, _CODES), _SQUARED, {}, r"^the square root of the expected values"),
        (_SQUARED**2, _SQUARED, {}, r"^the square of the expected values"),
        (-_SQUARED, _SQUARED, {}, r"^the negative of the expected values"),
        (_SQUARED * 2.5, _SQUARED, {}, r"^the expected values times 2\.5 "),
        (
            16 * _SQUARED,
            _SQUARED,
            {"sizes": {"N": 6, "D": 16}},
            r"factor of D = 16 too large: a sum",
        ),
        (_SQUARED.sum() * 4, _SQUARED.sum(), {"sizes": {"D": 4}}, r"factor of D = 4 too large"),
        (_SQUARED.mean() / 8, _SQUARED.mean(), {"sizes": {"K": 8}}, r"K = 8 too small: a mean"),
        (2 * _SQUARED, _SQUARED, {"sizes": {"N": 2, "B": 2}}, r"factor of N = B = 2 too large"),
        (_SQUARED[:5].T, _SQUARED[:5], {"exact": True}, r"transposed \(the last two dims swapped"),
        (_CUBE.transpose(0, 2), _CUBE, {}, r"transposed \(dims 0 and 2 swapped\)"),
        (_Z.view(3, 2, 4)[[2, 0, 1]], _Z.view(3, 2, 4), {}, "entry i holds expected entry i−1"),
        (
            _Z.view(3, 8)[[1, 2, 2]],
            _Z.view(3, 8),
            {},
            "along dim 0: entry i holds expected entry i\\+1",
        ),
        (_Z[:, [0, 0, 1, 2]], _Z, {}, "along dim 1: entry i holds expected entry i−1"),
        (torch.tensor([9, 0, 3, 1]), torch.tensor([0, 3, 1, 2]), {"exact": True}, "i−1"),
        (torch.tensor([2, 4, 6]), torch.tensor([1, 2, 3]), {"exact": True}, "times 2 "),
        (
            _SQUARED + 1,
            _SQUARED,
            {"alternatives": {"one too many": _SQUARED + 1}},
            "^one too many$",
        ),
        (_SQUARED.T, _SQUARED, {}, r"with dims 0 and 1 swapped: a transpose"),
        (_SQUARED[..., None], _SQUARED, {}, r"an extra dim of size 1"),
        (_SQUARED.sum(1), _SQUARED.sum(1, keepdim=True), {}, r"without one of its dims of size 1"),
        (torch.zeros(6, 20), _SQUARED, {"sizes": {"D": 4}}, r"dim 1 D = 4 times too large"),
        (torch.zeros(2, 5), _SQUARED, {"sizes": {"T": 3}}, r"dim 0 T = 3 times too small: T split"),
        (torch.zeros(2, 3, 4), torch.zeros(3, 4, 2), {}, "the expected sizes in another order"),
        (_SQUARED[:3], _SQUARED, {"alternatives": {"half the rows": _SQUARED[:3]}}, "half the"),
    ],
)
def test_a_recognisable_mistake_is_named(got, expected, kwargs, looks_like):
    assert re.search(looks_like, _diagnosis(got, expected, **kwargs))


def test_an_alternative_comes_before_the_generic_relations():
    alternatives = {"not this": _SQUARED + 3, "distances from cdist": torch.cdist(_Z, _CODES)}
    assert _diagnosis(torch.cdist(_Z, _CODES), _SQUARED, alternatives=alternatives) == (
        "distances from cdist"
    )


@pytest.mark.parametrize("seed", range(20))
def test_random_mismatches_are_not_diagnosed(seed):
    g = torch.Generator().manual_seed(seed)
    shape = [(1,), (2,), (5,), (4, 4), (2, 3, 3), ()][seed % 6]
    expected = torch.randn(shape, generator=g)
    assert _diagnosis(torch.randn(shape, generator=g), expected) == ""
    assert _diagnosis(expected.abs() + 1, expected.abs()) == ""  # an offset is not a factor
    tokens = torch.randint(4, shape, generator=g)
    assert _diagnosis(tokens + 1, tokens, exact=True) == ""
    assert _diagnosis(torch.randn(3, 7, generator=g), torch.randn(7, 2, generator=g)) == ""


def test_a_single_number_gets_a_factor_only_when_it_is_named():
    loss = torch.tensor(0.8)
    assert _diagnosis(loss * 2.5, loss) == ""  # any two numbers differ by some factor
    assert _diagnosis(loss * 3, loss, sizes={"D": 3}).startswith("a factor of D = 3 too large")
    assert _diagnosis(-loss, loss).startswith("the negative")


def test_ambiguous_relations_are_not_diagnosed():
    four = torch.full((3,), 4.0)
    assert _diagnosis(four / 2, four) == ""  # √4 = 4 / 2: which one?
    rows = torch.tensor([[1.0, 2.0], [2.0, 1.0]])  # transposed = shifted along dim 1 and 0
    assert _diagnosis(rows.flip(0), rows) == ""


def test_zeros_and_nans_are_diagnosed_safely():
    values = torch.tensor([0.0, 1.0, 4.0, 9.0])
    assert _diagnosis(torch.zeros(4), values) == ""  # nothing computed is no factor
    assert _diagnosis(torch.ones(4), torch.zeros(4)) == ""
    assert _diagnosis(torch.full((4,), float("nan")), values) == ""
    assert _diagnosis(values.sqrt() * torch.tensor([1, 1, 1, float("nan")]), values) == ""
    nan_too = torch.tensor([float("nan"), 4.0, 9.0])
    assert _diagnosis(nan_too.sqrt(), nan_too).startswith("the square root")
    assert _diagnosis(torch.tensor([-1.0, -2.0]), torch.tensor([-1.0, 4.0])) == ""  # no √ of < 0
    assert _diagnosis(torch.empty(0, 3), torch.empty(3, 0)).startswith("the expected shape")


def test_a_diagnosis_is_shown_in_place_of_the_hint():
    message = _fail(lambda x: -_double(x) if isinstance(x, torch.Tensor) else _double(x))
    assert "  got:      3 of 4 values differ" in message
    assert "\n  looks like: the negative of the expected values (a sign flipped)" in message
    assert "hint:" not in message and len(message.splitlines()) == 4


# --- container, type, shape and dtype of a result --------------------------------------------


def _failure(method, *args, **kwargs) -> _Failure:
    with pytest.raises(_Failure) as info:
        method(*args, **kwargs)
    return info.value


def test_parts_names_the_tuple_it_wanted():
    check = Check(lambda: None, torch.device("cpu"))
    assert check.parts([1, 2], ("a", "b")) == (1, 2)
    failure = _failure(check.parts, (torch.zeros(3),), ("usage", "perplexity"))
    assert failure.what == "returns a tuple (usage, perplexity)"
    assert failure.expected == "a tuple of 2 values"
    assert failure.got == "a tuple of 1 value: (tensor of shape (3,), dtype torch.float32, on cpu)"
    assert failure.hint == "end with `return usage, perplexity`"
    assert _failure(check.parts, None, ("a", "b")).got == "None"
    assert check.count == 3


def test_tensor_checks_type_shape_and_dtype():
    check = Check(lambda: None, torch.device("cpu"))
    x = torch.zeros(2, 3)
    assert check.tensor(x, "x", shape=(2, 3), dtype=torch.float32) is x
    failure = _failure(check.tensor, [0.0], "the result", shape=(2, 3))
    assert (failure.expected, failure.got) == ("a tensor of shape (2, 3)", "a list: [0.0]")
    failure = _failure(check.tensor, x.T, "the result", shape=(2, 3), dtype=torch.float32)
    assert failure.expected == "a tensor of shape (2, 3), dtype torch.float32"
    assert failure.got.startswith("tensor of shape (3, 2)")
    assert failure.diagnosis.startswith("the expected shape with dims 0 and 1 swapped")
    failure = _failure(check.tensor, x.double(), "the result", dtype=torch.float32)
    assert "dtype torch.float64" in failure.got and "keep the input's dtype" in failure.hint
    assert check.count == 4


def test_close_equal_and_tensor_keep_their_hints_for_what_they_are_about():
    check = Check(lambda: None, torch.device("cpu"))
    x = torch.zeros(2, 3)
    values = "a hint about the values"
    assert _failure(check.close, x.double(), x, "x", hint=values).hint == _DTYPE_HINT
    assert _failure(check.equal, x.double(), x, "x", hint=values).hint == _DTYPE_HINT
    assert _failure(check.tensor, x.double(), "x", dtype=torch.float32, hint="pad").hint == (
        _DTYPE_HINT
    )
    assert _failure(check.close, x + 1, x, "x", hint=values).hint == values
    assert _failure(check.close, x[:1], x, "x", hint=values).hint == values
    # another device (meta stands in for a GPU here) gets the device hint, not the values' one
    elsewhere = torch.zeros(2, 3, device="meta")
    assert _failure(check.close, elsewhere, x, "x", hint=values).hint == _DEVICE_HINT
    assert _failure(check.tensor, x[:1], "x", shape=(2, 3), hint="pad").hint == "pad"
    # a caller's hint that is about the dtype is passed as dtype_hint, and is shown for it
    about_dtype = "cast alpha_bar to x's dtype"
    for failure in (
        _failure(check.close, x.double(), x, "x", hint=values, dtype_hint=about_dtype),
        _failure(check.equal, x.double(), x, "x", hint=values, dtype_hint=about_dtype),
        _failure(check.tensor, x.double(), "x", dtype=torch.float32, dtype_hint=about_dtype),
    ):
        assert failure.hint == about_dtype
    assert _failure(check.close, x + 1, x, "x", hint=values, dtype_hint=about_dtype).hint == values


def test_an_integer_or_bool_result_of_another_dtype_is_not_told_to_keep_the_inputs():
    """Indices from float inputs are long, a mask from ids is bool: "keep the input's dtype"
    would mislead there."""
    check = Check(lambda: None, torch.device("cpu"))
    tokens = torch.zeros(4, dtype=torch.long)
    failure = _failure(check.equal, tokens.float(), tokens, "tokens", hint="argmin over dim 1")
    assert failure.hint.startswith("return torch.int64, as documented: indices (argmin")
    mask = torch.ones(2, 2, dtype=torch.bool)
    failure = _failure(check.tensor, mask.long(), "the mask", dtype=torch.bool)
    assert failure.hint.startswith("return torch.bool, as documented")
    assert "dtype=torch.bool" in failure.hint and "input's dtype" not in failure.hint


def test_number_takes_a_float_or_a_zero_dim_tensor():
    check = Check(lambda: None, torch.device("cpu"))
    assert check.number(0.5, "usage") == 0.5 and check.number(torch.tensor(2), "usage") == 2.0
    failure = _failure(check.number, torch.ones(4), "usage")
    assert failure.expected == "one number (a float, or a tensor of shape ())"
    assert failure.got == "tensor of shape (4,), dtype torch.float32, on cpu"
    assert _failure(check.number, [0.5], "usage").got == "a list: [0.5]"
    assert _failure(check.number, True, "usage").got == "a bool: True"


def test_a_result_that_is_not_a_tensor_gets_its_own_hint():
    check = Check(lambda: None, torch.device("cpu"))
    x = torch.zeros(2, 3)
    failure = _failure(check.close, (x,), x, "values", hint="a hint about the values")
    assert (
        failure.got == "a tuple of 1 value: (tensor of shape (2, 3), dtype torch.float32, on cpu)"
    )
    assert failure.hint == "return the tensor itself, not a tuple or list holding it"
    failure = _failure(check.tensor, None, "the result", shape=(2, 3), hint="pad to (2, 3)")
    assert (failure.got, failure.hint) == ("a NoneType: None", "return a torch.Tensor")
    assert _failure(check.tensor, x[:1], "the result", shape=(2, 3), hint="pad").hint == "pad"


def test_a_huge_result_is_not_diagnosed():
    big = torch.ones((1 << 22) + 1)
    assert _diagnosis(-big, big) == "" and _diagnosis(-big[:-1], big[:-1]) != ""
