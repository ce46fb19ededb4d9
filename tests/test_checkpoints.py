"""The one checkpoint interface: every shipped weight file loads through its Weights record, a
record saves and loads (half precision and config extras included), bad files name the command
that rebuilds them, and caches are made once and remade when stale."""

import pytest
import torch
from torch import nn

from mmcourse import checkpoints, recipes, train
from mmcourse.checkpoints import CheckpointError, Weights


class Tiny(nn.Module):
    def __init__(self, width: int = 3):
        super().__init__()
        self.lin = nn.Linear(width, 2)
        self.config = {"width": width}


@pytest.mark.parametrize("name", sorted(recipes.WEIGHTS))
def test_every_shipped_file_loads_and_has_a_rebuild_command(name):
    weights = recipes.WEIGHTS[name]
    model = recipes.load(name, device="cpu")
    assert isinstance(model, weights.model) and not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    target = weights.command.removeprefix("python -m mmcourse.train ")
    assert target in train.TARGETS, f"{weights.command} names no train target"


def test_a_record_round_trips_in_half_precision_with_its_extras(tmp_path):
    weights = Weights("tiny.pt", Tiny, command="python -m mmcourse.train tiny", half=True,
                      extras=("scale",))  # fmt: skip
    model = Tiny(width=5)
    path = weights.save(model, config=model.config | {"scale": 0.25}, path=tmp_path / "t.pt")
    stored = torch.load(path, weights_only=True)
    assert stored["state_dict"]["lin.weight"].dtype == torch.float16
    loaded, config = weights.load_with_config(path, device="cpu")
    assert config == {"width": 5, "scale": 0.25}  # the extra travels, the model never sees it
    assert loaded.lin.weight.dtype == torch.float32 and not loaded.training
    assert torch.equal(loaded.lin.weight, model.lin.weight.half().float())


def test_bad_files_name_the_model_and_the_rebuild_command(tmp_path):
    weights = Weights("tiny.pt", Tiny, command="python -m mmcourse.train tiny")
    with pytest.raises(FileNotFoundError, match="python -m mmcourse.train tiny"):
        weights.load(tmp_path / "missing.pt")
    (tmp_path / "cut.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="could not be read.*python -m mmcourse.train tiny"):
        weights.load(tmp_path / "cut.pt")
    checkpoints.save(tmp_path / "other.pt", {"w": torch.zeros(1)}, config={}, command="x")
    with pytest.raises(CheckpointError, match="does not match the Tiny model.*train tiny"):
        weights.load(tmp_path / "other.pt")


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"no shipped weights named 'tokeniser'.*'tokenizer'"):
        recipes.load("tokeniser")


def test_a_cache_is_made_once_and_remade_when_stale_or_truncated(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoints, "CACHE_DIR", tmp_path)
    made = []

    def make():
        made.append(1)
        return torch.arange(4)

    def valid(v):
        return isinstance(v, torch.Tensor) and v.shape == (4,)

    assert torch.equal(checkpoints.cached("c.pt", make, valid), torch.arange(4))
    assert torch.equal(checkpoints.cached("c.pt", make, valid), torch.arange(4))
    assert len(made) == 1  # the second call read the file
    torch.save(torch.zeros(3), tmp_path / "c.pt")  # stale: another size
    checkpoints.cached("c.pt", make, valid)
    (tmp_path / "c.pt").write_bytes(b"\x80")  # truncated
    assert torch.equal(checkpoints.cached("c.pt", make, valid), torch.arange(4))
    assert len(made) == 3
