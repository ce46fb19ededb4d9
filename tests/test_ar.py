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


def test_mismatch_captions_swaps_a_fixed_fraction_of_captions_and_keeps_the_images():
    seqs = _sequences(270)  # every caption 3 times
    noisy = ar.mismatch_captions(seqs, 0.3, seed=0)
    assert torch.equal(noisy, ar.mismatch_captions(seqs, 0.3, seed=0))  # seeded
    assert not torch.equal(noisy, ar.mismatch_captions(seqs, 0.3, seed=1))
    assert torch.equal(noisy[:, ar.CAPTION_LEN :], seqs[:, ar.CAPTION_LEN :])  # images untouched
    changed = (noisy[:, : ar.CAPTION_LEN] != seqs[:, : ar.CAPTION_LEN]).any(dim=1)  # (270,)
    assert 70 < int(changed.sum()) <= 81  # 30 % = 81 rows, minus same-caption draws
    captions = {tuple(row) for row in ar.encode_captions(all_captions()).tolist()}
    assert {tuple(row) for row in noisy[:, : ar.CAPTION_LEN].tolist()} <= captions  # real ones
    assert torch.equal(ar.mismatch_captions(seqs, 0.0), seqs)
    with pytest.raises(ValueError, match=r"^fraction must be a number in \[0, 1\], got 1.5"):
        ar.mismatch_captions(seqs, 1.5)


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
    kwargs["device"] = "cpu"  # bit for bit: the CPU's promise (a GPU may reorder its sums)
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


def test_early_checkpoint_is_small_loads_and_differs_from_the_final_one():
    assert ar.EARLY_PATH.stat().st_size < 2_000_000
    assert 1 <= ar.EARLY_STEPS < ar.TRAIN_STEPS
    early, final = ar.load_ar(ar.EARLY_PATH, device="cpu"), ar.load_ar(device="cpu")
    assert not early.training and early.config == final.config
    assert next(early.parameters()).dtype == torch.float32
    assert not torch.equal(early.norm.weight, final.norm.weight)


def test_callback_sees_every_step_and_does_not_change_the_run():
    seqs = _sequences(4)
    config = ar.default_config(n_layer=1, d_model=32, n_head=2)
    kwargs = {"config": config, "steps": 12, "batch": 8, "progress": False, "device": "cpu"}
    seen, snapshots = [], {}

    def callback(step, model):
        seen.append(step)
        if step == 5:
            snapshots[step] = {k: v.clone() for k, v in model.state_dict().items()}

    plain, watched = ar.train_ar(seqs, **kwargs), ar.train_ar(seqs, **kwargs, callback=callback)
    assert seen == list(range(1, 13)) and plain.losses == watched.losses
    stopped = []

    class Stop(Exception):
        pass

    def stop_after_five(step, model):
        stopped.append({k: v.clone() for k, v in model.state_dict().items()})
        if step == 5:
            raise Stop  # the first 5 steps of a 12-step run, cut short

    with pytest.raises(Stop):
        ar.train_ar(seqs, **kwargs, callback=stop_after_five)
    assert all(torch.equal(v, stopped[-1][k]) for k, v in snapshots[5].items())


def test_rebuild_writes_the_final_and_the_early_checkpoint(tmp_path, monkeypatch):
    """A miniature rebuild (3 of 6 steps, a stub faithfulness) writes both files in float16."""
    from mmcourse import sampling

    monkeypatch.setattr(ar, "PATH", tmp_path / "ar_shapes.pt")
    monkeypatch.setattr(ar, "EARLY_PATH", tmp_path / "ar_shapes_early.pt")
    monkeypatch.setattr(ar, "TRAIN_STEPS", 6)
    monkeypatch.setattr(ar, "EARLY_STEPS", 3)
    monkeypatch.setattr(ar, "shapes_sequences", lambda seed, tokenizer: _sequences(8, seed))
    monkeypatch.setattr(sampling, "faithfulness", lambda *a, **k: {"all": 0.5})
    summary = ar.rebuild(seed=0)
    assert "ar_shapes_early.pt (step 3" in summary and "ar_shapes.pt (step 6" in summary
    for path in (ar.PATH, ar.EARLY_PATH):
        ckpt = checkpoints.load(path, command=ar.COMMAND)
        assert all(v.dtype == torch.float16 for v in ckpt["state_dict"].values())
    early, final = ar.load_ar(ar.EARLY_PATH, "cpu"), ar.load_ar(ar.PATH, "cpu")
    assert not torch.equal(early.norm.weight, final.norm.weight)
    monkeypatch.setattr(ar, "EARLY_STEPS", 7)
    with pytest.raises(ValueError, match="EARLY_STEPS must be in"):
        ar.rebuild(seed=0)


def test_rebuild_noisy_trains_on_mismatched_captions(tmp_path, monkeypatch):
    """A miniature ar_noisy rebuild (4 steps, a stub faithfulness): same recipe and seed as the
    shipped model, only the captions differ, so the weights differ; errors name its command."""
    from mmcourse import sampling

    monkeypatch.setattr(ar, "NOISY_PATH", tmp_path / "ar_shapes_noisy.pt")
    monkeypatch.setattr(ar, "TRAIN_STEPS", 4)
    monkeypatch.setattr(ar, "shapes_sequences", lambda seed, tokenizer: _sequences(90, seed))
    monkeypatch.setattr(sampling, "faithfulness", lambda *a, **k: {"all": 0.5})
    seen = []
    real = ar.mismatch_captions
    monkeypatch.setattr(ar, "mismatch_captions", lambda *a: seen.append(a[1:]) or real(*a))
    summary = ar.rebuild_noisy(seed=0)
    assert seen == [(ar.CAPTION_NOISE, 0)] and "ar_shapes_noisy.pt (step 4" in summary
    ckpt = checkpoints.load(ar.NOISY_PATH, command=ar.NOISY_COMMAND)
    assert ckpt["command"] == "python -m mmcourse.train ar_noisy"
    assert all(v.dtype == torch.float16 for v in ckpt["state_dict"].values())
    ar.NOISY_PATH.write_bytes(b"broken")
    with pytest.raises(checkpoints.CheckpointError, match="python -m mmcourse.train ar_noisy"):
        ar.load_ar(ar.NOISY_PATH)
