"""Course datasets: all generated from a seed or shipped inside an installed package; nothing is
downloaded."""

from mmcourse.data.digits import DigitsDataset
from mmcourse.data.moving import DIRECTIONS, MovingShapesDataset, make_motion_caption
from mmcourse.data.shapes import (
    ATTRIBUTES,
    COLORS,
    POSITIONS,
    SHAPES,
    ShapesDataset,
    all_captions,
    caption_to_labels,
    labels_to_caption,
    make_caption,
    parse_caption,
    render,
)

__all__ = [
    "ATTRIBUTES",
    "COLORS",
    "DIRECTIONS",
    "POSITIONS",
    "SHAPES",
    "DigitsDataset",
    "MovingShapesDataset",
    "ShapesDataset",
    "all_captions",
    "caption_to_labels",
    "labels_to_caption",
    "make_caption",
    "make_motion_caption",
    "parse_caption",
    "render",
]
