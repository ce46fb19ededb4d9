"""Public functions answer wrong input with a clear ValueError/TypeError naming the argument
(property-tested over random shapes, dtypes and objects), never a crash deep inside torch."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmcourse import recipes
from mmcourse.data import render
from mmcourse.viz import image_grid

DTYPES = [torch.float16, torch.float32, torch.float64, torch.int64, torch.uint8, torch.bool]
shapes = st.lists(st.integers(0, 5), min_size=0, max_size=6).map(tuple)
not_tensors = st.one_of(st.none(), st.integers(), st.text(max_size=5), st.lists(st.floats()))


@pytest.fixture(scope="module")
def the_judge():
    return recipes.load("judge", device="cpu")


@settings(max_examples=60, deadline=None)
@given(shape=shapes)
def test_image_grid_names_x_on_wrong_dimensions(shape):
    if len(shape) == 4:
        return
    with pytest.raises(ValueError, match=r"^x must have 4 dimensions \(N, C, H, W\)"):
        image_grid(torch.zeros(shape))


@settings(max_examples=30, deadline=None)
@given(obj=not_tensors)
def test_image_grid_names_x_when_not_a_tensor(obj):
    with pytest.raises(TypeError, match="^x must be a torch.Tensor"):
        image_grid(obj)


@settings(max_examples=30, deadline=None)
@given(ncols=st.one_of(st.integers(-5, 0), st.floats(), st.text(max_size=3)))
def test_image_grid_names_bad_ncols(ncols):
    with pytest.raises((ValueError, TypeError), match="^ncols must be"):
        image_grid(torch.zeros(2, 3, 4, 4), ncols=ncols)


@settings(max_examples=60, deadline=None)
@given(shape=shapes, dtype=st.sampled_from(DTYPES))
def test_judge_read_names_x_on_wrong_layout(the_judge, shape, dtype):
    good = len(shape) == 4 and shape[1:] == (3, 32, 32) and dtype.is_floating_point
    if good:
        return
    with pytest.raises((ValueError, TypeError), match="^x must"):
        the_judge.read(torch.zeros(shape, dtype=dtype))


@settings(max_examples=30, deadline=None)
@given(low=st.floats(-1e3, -0.01), high=st.floats(1.01, 1e3))
def test_judge_read_names_the_range(the_judge, low, high):
    x = torch.zeros(1, 3, 32, 32)
    x[0, 0, 0, 0], x[0, 0, 0, 1] = low, high
    with pytest.raises(ValueError, match=r"^x must hold values in \[0, 1\]"):
        the_judge.read(x)


@settings(max_examples=40, deadline=None)
@given(shape=shapes)
def test_render_names_labels_on_wrong_shape(shape):
    if len(shape) == 2 and shape[1] == 3:
        return
    with pytest.raises(ValueError, match="^labels must have"):
        render(torch.zeros(shape, dtype=torch.long))


def test_render_names_bad_label_values_and_dtype():
    with pytest.raises(ValueError, match=r"^shape index must be in \[0, 3\), got 7"):
        render(torch.tensor([[0, 7, 0]]))
    with pytest.raises(TypeError, match="^labels must have dtype torch.int64"):
        render(torch.zeros(1, 3))
