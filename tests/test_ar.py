"""mmcourse.ar: the joint vocabulary, training sequences, caption dropout, loss and checkpoint."""

from __future__ import annotations

import pytest
import torch

from mmcourse import ar, checkpoints
from mmcourse.data import all_captions

pytestmark = pytest.mark.usefixtures("one_thread")


def _sequences(n: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(ar.CODES, (n, 8, 8), generator=g)
    return ar.make_sequences(ar.encode_captions((all_captions() * 3)[:n]), codes)


def test_vocabulary_ranges_do_not_collide():
    words, specials = set(range(len(ar.WORDS))), set(ar.SPECIALS.values())
    images = set(range(ar.IMAGE_OFFSET, ar.VOCAB_SIZE))
    assert len(words) + len(specials) + len(images) == ar.VOCAB_SIZE
    assert not (words & specials or words & images or specials & images)
    assert len(set(ar.WORDS)) == len(ar.WORDS) == 17


def test_captions_round_trip_and_pad_on_the_left():
    ids = ar.encode_captions(all_captions())
    assert ids.shape == (90, ar.CAPTION_LEN)
    assert [ar.decode_caption(row) for row in ids] == all_captions()
    short = ar.encode_captions("a red circle in the center")[0]
    assert short[0].item() == ar.PAD and ar.PAD not in short[1:].tolist()
    with pytest.raises(ValueError):
        ar.encode_captions("a pink circle in the center")


def test_sequence_layout():
    seqs = _sequences()
    assert seqs.shape == (6, ar.SEQ_LEN)
    assert bool((seqs[:, ar.CAPTION_LEN] == ar.BOI).all() and (seqs[:, -1] == ar.EOI).all())
    image = seqs[:, ar.CAPTION_LEN + 1 : -1]
    assert bool(((image >= ar.IMAGE_OFFSET) & (image < ar.VOCAB_SIZE)).all())
    with pytest.raises(ValueError, match="image_tokens must hold 64 codes"):
        ar.make_sequences(ar.encode_captions(all_captions()[:2]), torch.zeros(2, 4, 4).long())


def test_caption_dropout_keeps_the_length():
    seqs = _sequences(200)
    dropped = ar.drop_captions(seqs, 0.5, torch.Generator().manual_seed(0))
    rows = (dropped[:, : ar.CAPTION_LEN] == ar.NULL).all(dim=1)
    assert 60 < int(rows.sum()) < 140
    assert torch.equal(dropped[:, ar.CAPTION_LEN :], seqs[:, ar.CAPTION_LEN :])
    assert torch.equal(dropped[~rows], seqs[~rows])


def test_loss_scores_image_tokens_only():
    model = ar.GPT(ar.default_config(n_layer=1, d_model=32, n_head=2)).eval()
    seqs = _sequences()
    other = seqs.clone()
    other[:, 1 : ar.CAPTION_LEN] = ar.PAD  # different caption targets, same image
    loss = ar.lm_loss(model, seqs)
    assert loss.item() == pytest.approx(torch.log(torch.tensor(ar.VOCAB_SIZE * 1.0)).item(),
                                        rel=0.05)  # fmt: skip
    logits = model(other[:, :-1])
    assert logits.shape == (6, ar.SEQ_LEN - 1, ar.VOCAB_SIZE)


def test_training_is_deterministic_and_learns():
    seqs = _sequences(4)
    config = ar.default_config(n_layer=1, d_model=32, n_head=2)
    kwargs = {"config": config, "steps": 40, "batch": 8, "lr": 1e-2, "progress": False}
    a, b = ar.train_ar(seqs, **kwargs), ar.train_ar(seqs, **kwargs)
    assert a.losses == b.losses
    assert a.losses[-1] < a.losses[0] - 0.5


def test_shipped_checkpoint_is_small_and_loads():
    assert ar.PATH.stat().st_size < 2_000_000
    model = ar.load_ar(device="cpu")
    assert not model.training and model.cfg.vocab_size == ar.VOCAB_SIZE
    assert next(model.parameters()).dtype == torch.float32


def test_missing_or_corrupt_checkpoint_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m mmcourse.train ar"):
        ar.load_ar(tmp_path / "nothing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoints.CheckpointError, match="python -m mmcourse.train ar"):
        ar.load_ar(bad)
    wrong = tmp_path / "wrong.pt"
    model = ar.GPT(ar.default_config(n_layer=1))
    state = model.state_dict()
    state.pop("norm.weight")
    checkpoints.save(wrong, state, config=model.config, command=ar.COMMAND)
    with pytest.raises(checkpoints.CheckpointError, match="does not match the GPT model"):
        ar.load_ar(wrong)
