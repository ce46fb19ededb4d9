"""Chapter recipe for mmcourse.video (being moved here from the model module)."""

from mmcourse.checkpoints import Weights
from mmcourse.video import VideoVQVAE

WEIGHTS = {
    "video": Weights("video_tokenizer.pt", VideoVQVAE, command="python -m mmcourse.train video")
}
REBUILDS: dict = {}
