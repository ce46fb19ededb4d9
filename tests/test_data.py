"""Course data: seeded, complete over the grammar, and shaped as documented."""

import pytest
import torch

from mmcourse.data import (
    ATTRIBUTES,
    COLORS,
    DIRECTIONS,
    POSITIONS,
    SHAPES,
    DigitsDataset,
    MovingShapesDataset,
    ShapesDataset,
    all_captions,
    caption_to_labels,
    labels_to_caption,
    make_caption,
    parse_caption,
)
from mmcourse.data.moving import FRAMES, SPEED


@pytest.fixture(scope="module")
def shapes():
    return ShapesDataset(n=1_000, seed=0)


def test_grammar_is_large_enough():
    assert len(SHAPES) >= 3 and len(COLORS) >= 6 and len(POSITIONS) >= 5
    assert len(all_captions()) == len(SHAPES) * len(COLORS) * len(POSITIONS)
    assert len(set(all_captions())) == len(all_captions())


def test_same_seed_same_images_other_seed_other_images(shapes):
    again = ShapesDataset(n=1_000, seed=0)
    assert torch.equal(shapes.images, again.images) and shapes.captions == again.captions
    other = ShapesDataset(n=1_000, seed=1)
    assert not torch.equal(shapes.images, other.images)


def test_items_and_layout(shapes):
    x, y = shapes[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y.shape == (3,)
    assert shapes.images.min() >= 0 and shapes.images.max() <= 1
    # 8-bit levels, like real images
    assert torch.allclose(shapes.images * 255, (shapes.images * 255).round(), atol=1e-4)
    assert len(shapes) == 1_000


def test_captions_agree_with_labels(shapes):
    for caption, labels in zip(shapes.captions, shapes.labels):
        assert torch.equal(caption_to_labels(caption), labels)
        assert labels_to_caption(labels) == caption


def test_every_attribute_value_occurs(shapes):
    for i, attribute in enumerate(ATTRIBUTES):
        k = {"color": len(COLORS), "shape": len(SHAPES), "position": len(POSITIONS)}[attribute]
        assert set(shapes.labels[:, i].tolist()) == set(range(k))


def test_the_drawn_colour_is_the_captioned_colour(shapes):
    palette = torch.tensor(list(COLORS.values()))
    brightest = shapes.images.flatten(2).max(dim=2).values  # (N, 3): the shape's interior
    assert torch.allclose(brightest, palette[shapes.labels[:, 0]], atol=1 / 255)


def test_the_shape_sits_in_the_captioned_region(shapes):
    mask = shapes.images.sum(1) > 0.1  # (N, H, W)
    coords = torch.arange(32.0) + 0.5
    area = mask.sum((1, 2)).float()
    cx = (mask.sum(1) * coords).sum(1) / area
    cy = (mask.sum(2) * coords).sum(1) / area
    centres = torch.tensor(list(POSITIONS.values()))[shapes.labels[:, 2]]
    assert (cx - centres[:, 0]).abs().max() < 4 and (cy - centres[:, 1]).abs().max() < 4


def test_size_jitter(shapes):
    circles = shapes.images[shapes.labels[:, 1] == 0]
    area = (circles.sum(1) > 0.1).sum((1, 2)).float()
    assert area.max() / area.min() > 1.5  # radius range 4–6 px → area ratio 2.25


def test_parse_caption_round_trip_and_errors():
    assert parse_caption("a red circle in the top left") == {
        "color": "red",
        "shape": "circle",
        "position": "top left",
    }
    assert [make_caption(**parse_caption(c)) for c in all_captions()] == all_captions()
    for bad in [
        "a pink circle in the top left",
        "a red circle",
        "red circle in the center",
        "a red hexagon in the center",
        "a red circle in the middle",
        "",
    ]:
        with pytest.raises(ValueError, match="caption"):
            parse_caption(bad)
    with pytest.raises(TypeError, match="caption must be a str"):
        parse_caption(3)


def test_labels_to_caption_rejects_out_of_range():
    with pytest.raises(ValueError, match="color index"):
        labels_to_caption(torch.tensor([6, 0, 0]))
    with pytest.raises(ValueError, match="labels must have shape"):
        labels_to_caption(torch.tensor([0, 0]))


@pytest.fixture(scope="module")
def clips():
    return MovingShapesDataset(n=200, seed=0)


def test_moving_shapes_layout_and_determinism(clips):
    x, y = clips[0]
    assert x.shape == (FRAMES, 3, 32, 32) and y.shape == (3,)
    assert torch.equal(clips.clips, MovingShapesDataset(n=200, seed=0).clips)
    names = list(DIRECTIONS)
    for caption, labels in zip(clips.captions, clips.labels.tolist()):
        assert caption == (
            f"a {list(COLORS)[labels[0]]} {SHAPES[labels[1]]} moving {names[labels[2]]}"
        )


def test_moving_shapes_move_as_captioned_and_stay_in_frame(clips):
    mask = clips.clips.sum(2) > 0.1  # (N, T, H, W)
    area = mask.sum((2, 3)).float()  # (N, T)
    assert ((area.max(1).values - area.min(1).values) / area.mean(1)).max() < 0.15  # never clipped
    coords = torch.arange(32.0) + 0.5
    cx = (mask.sum(2) * coords).sum(2) / area
    cy = (mask.sum(3) * coords).sum(2) / area
    step = torch.tensor(list(DIRECTIONS.values()))[clips.labels[:, 2]] * SPEED  # (N, 2)
    moved = torch.stack([cx[:, -1] - cx[:, 0], cy[:, -1] - cy[:, 0]], dim=1) / (FRAMES - 1)
    assert torch.allclose(moved, step, atol=0.35)


def test_digits_are_real_split_and_resizable():
    train, test = DigitsDataset("train"), DigitsDataset("test")
    assert len(train) == 1_437 and len(test) == 360
    assert set(test.labels.tolist()) == set(range(10))
    x, y = test[0]
    assert x.shape == (1, 8, 8) and 0 <= x.min() and x.max() <= 1 and y.dtype == torch.long
    flat_train, flat_test = train.images.flatten(1), test.images.flatten(1)
    assert torch.cdist(flat_test, flat_train).min() > 0  # no test image is a training image
    assert DigitsDataset("test", size=32).images.shape == (360, 1, 32, 32)
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        DigitsDataset("val")
