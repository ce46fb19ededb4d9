"""The course data, the judge and every shipped model load and run with every network socket
blocked: nothing in the course downloads at run time."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network blocked by the test")

    socket.socket.connect = refuse
    socket.socket.connect_ex = refuse
    socket.create_connection = refuse
    socket.getaddrinfo = refuse
    try:
        socket.create_connection(("127.0.0.1", 9))
    except OSError as err:
        assert "blocked" in str(err)

    from mmcourse.data import DigitsDataset, MovingShapesDataset, ShapesDataset
    from mmcourse import recipes

    shapes = ShapesDataset(n=200, seed=1)
    clips = MovingShapesDataset(n=8, seed=1)
    digits = DigitsDataset("test")
    scores = recipes.load("judge", device="cpu").score(shapes.images, shapes.captions)
    assert min(scores.values()) > 0.9, scores

    tok = recipes.load("tokenizer", device="cpu")
    assert tok.decode(tok.encode(shapes.images[:4])).shape == (4, 3, 32, 32)
    for name in ("vit", "clip", "captioner"):
        recipes.load(name, device="cpu")
    for name in ("diffusion", "diffusion_latent", "ar", "ar_early", "ar_noisy"):
        recipes.load(name, device="cpu")
    for name in ("unified", "transfusion"):
        recipes.load(name, device="cpu")
    video_tok = recipes.load("video", device="cpu")
    assert video_tok.encode(clips.clips[:2]).shape == (2, 2, 8, 8)
    print("offline ok", len(shapes), len(clips), len(digits))
    """
)


def test_data_judge_and_models_need_no_network():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "offline ok 200 8 360" in done.stdout
