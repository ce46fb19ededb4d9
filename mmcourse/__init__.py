"""mmcourse: multimodal generation built from scratch, one idea per module.

Chapters import their building blocks from here, never from a learner's notebook, so one
unfinished exercise never blocks the next chapter.
"""

from mmcourse.env import device

__version__ = "0.1.0"
__all__ = ["device"]
