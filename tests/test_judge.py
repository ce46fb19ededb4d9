"""The judge reads real images right and is near chance on shuffled captions; its checkpoint
fails clearly."""

import pytest
import torch

from mmcourse import checkpoints, evaluation, recipes
from mmcourse.data import COLORS, POSITIONS, SHAPES, ShapesDataset
from mmcourse.judge import Judge
from mmcourse.recipes import judge as judge_recipe

CHANCE = {"color": 1 / len(COLORS), "shape": 1 / len(SHAPES), "position": 1 / len(POSITIONS)}


@pytest.fixture(scope="module")
def held_out():
    return ShapesDataset(n=1_000, seed=1)


@pytest.fixture(scope="module")
def the_judge():
    return recipes.load("judge", device="cpu")


def test_judge_reads_real_images(the_judge, held_out, device):
    scores = the_judge.to(device).score(held_out.images.to(device), held_out.captions)
    for attribute in CHANCE:
        assert scores[attribute] >= 0.98, scores


def test_judge_is_near_chance_on_shuffled_captions(the_judge, held_out):
    perm = torch.randperm(len(held_out), generator=torch.Generator().manual_seed(0))
    scores = the_judge.score(held_out.images, [held_out.captions[i] for i in perm])
    for attribute, chance in CHANCE.items():
        assert abs(scores[attribute] - chance) < 0.06, (attribute, scores)
    assert scores["all"] < 0.05


def test_judge_reads_labels_and_captions_alike(the_judge, held_out):
    x = held_out.images[:64]
    assert the_judge.score(x, held_out.labels[:64]) == the_judge.score(x, held_out.captions[:64])
    assert the_judge.read(x).shape == (64, 3)


def test_judge_rejects_bad_input(the_judge):
    with pytest.raises(ValueError, match="x must have shape"):
        the_judge.read(torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"x must hold values in \[0, 1\]"):
        the_judge.read(torch.rand(2, 3, 32, 32) * 255)
    with pytest.raises(ValueError, match="one caption per image"):
        the_judge.score(torch.rand(2, 3, 32, 32), ["a red circle in the center"])


def test_missing_checkpoint_names_the_rebuild_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m mmcourse.train judge"):
        recipes.load("judge", path=tmp_path / "judge.pt")


def test_corrupt_checkpoint_names_the_rebuild_command(tmp_path):
    path = tmp_path / "judge.pt"
    path.write_bytes(
        recipes.WEIGHTS["judge"].path.read_bytes()[:1000]
    )  # truncated download or disk error
    with pytest.raises(checkpoints.CheckpointError, match="python -m mmcourse.train judge"):
        recipes.load("judge", path=path)


def test_foreign_weights_are_refused(tmp_path):
    path = tmp_path / "judge.pt"
    checkpoints.save(
        path,
        {"w": torch.zeros(1)},
        config={"width": 32, "hidden": 128},
        command=recipes.WEIGHTS["judge"].command,
    )
    with pytest.raises(checkpoints.CheckpointError, match="does not match the Judge model"):
        recipes.load("judge", path=path)


def test_training_runs_and_learns(monkeypatch):
    monkeypatch.setattr(
        judge_recipe, "ShapesDataset", lambda n, seed: ShapesDataset(n=512, seed=seed)
    )
    losses = []
    model = judge_recipe.train_judge(steps=40, batch=64, log=losses.append)
    assert isinstance(model, Judge) and not model.training
    first, last = (float(line.split("loss")[1]) for line in (losses[0], losses[-1]))
    assert last < first


def test_embed_gives_features_that_tell_real_images_from_noise(the_judge, held_out, device):
    judge = the_judge.to(device)
    x = held_out.images.to(device)
    h = judge.embed(x)
    assert h.shape == (len(x), judge.config["hidden"]) and h.device == x.device
    torch.testing.assert_close(judge.embed(x[:7]), h[:7])  # per image, whatever the batch
    halves = evaluation.fid(h[:500], h[500:])
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0)).to(device)
    assert evaluation.fid(h[:500], judge.embed(noise[:500])) > 20 * halves
