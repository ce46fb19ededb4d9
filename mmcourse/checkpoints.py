"""The one interface to files under data/: shipped weights and the caches a first run writes.

A shipped checkpoint is a plain dict {"state_dict", "config", "command"} saved with torch.save
and read back with `torch.load(..., weights_only=True)`, so loading never runs pickled code.
Each weight file is described once, by a `Weights` record in its chapter's recipe:

    TOKENIZER = Weights("tokenizer.pt", VQVAE, command="python -m mmcourse.train tokenizer")
    model = TOKENIZER.load()            # eval mode, on the course's device
    TOKENIZER.save(trained_model)       # what the rebuild command does

A missing, corrupt or mismatched file raises an error that names the command rebuilding it.
Caches (tokenized datasets, latents) go through `cached`: computed once, kept under
data/cache/ (git-ignored), recomputed when stale or truncated.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from mmcourse.env import device as default_device

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
CACHE_DIR = DATA_DIR / "cache"
T = TypeVar("T")


class CheckpointError(RuntimeError):
    """A shipped checkpoint is unreadable or not what the code expects."""


def save(path: Path, state_dict: dict[str, torch.Tensor], *, config: dict, command: str) -> None:
    """Write weights with the config that builds their model and the command that rebuilds them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cpu_state = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    torch.save({"state_dict": cpu_state, "config": config, "command": command}, path)


def load(path: Path, *, command: str) -> dict:
    """Read a checkpoint written by `save`; on a missing or corrupt file, say how to rebuild it."""
    rebuild = f"rebuild it with: {command}"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path.name} not found in {path.parent}; {rebuild}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(
            f"checkpoint {path.name} could not be read ({type(err).__name__}); {rebuild}"
        ) from None
    if not isinstance(ckpt, dict) or not {"state_dict", "config"} <= set(ckpt):
        raise CheckpointError(
            f"checkpoint {path.name} does not hold 'state_dict' and 'config'; {rebuild}"
        )
    return ckpt


@dataclass(frozen=True)
class Weights:
    """One shipped weight file: data/<file>, the model class it fills, the command rebuilding it.

    model: the class, built as `model(**config)` unless `build(config)` is given (e.g. a GPT
      from a GPTConfig); its name appears in the error when a file does not fit it.
    half: stored in float16 (the transformers: half the bytes in git), loaded into float32.
    extras: config keys kept in the file beside the model's own arguments (a latent scale,
      a schedule name); `load_with_config` returns them, the model never sees them.
    """

    file: str
    model: type[nn.Module]
    command: str
    build: Callable[[dict], nn.Module] | None = None
    half: bool = False
    extras: tuple[str, ...] = ()

    @property
    def path(self) -> Path:
        return DATA_DIR / self.file

    def save(
        self, model: nn.Module, *, config: dict | None = None, path: Path | None = None
    ) -> Path:
        """Write `model`'s weights (in float16 when `half`) with `config` (default: the model's
        own `config`), to `path` (default: the shipped file); return the path."""
        path = Path(path) if path is not None else self.path
        state = model.state_dict()
        if self.half:
            state = {k: v.detach().half() for k, v in state.items()}  # a copy, in float16
        save(
            path, state, config=config if config is not None else model.config, command=self.command
        )
        return path

    def load_with_config(
        self, path: Path | str | None = None, device: torch.device | str | None = None
    ) -> tuple[nn.Module, dict]:
        """(model in eval mode on `device` (default: the course's), the file's whole config)."""
        path = Path(path) if path is not None else self.path
        ckpt = load(path, command=self.command)
        config = dict(ckpt["config"])
        state = ckpt["state_dict"]
        if self.half:
            state = {k: v.float() for k, v in state.items()}
        args = {k: v for k, v in config.items() if k not in self.extras}
        try:
            model = self.build(args) if self.build is not None else self.model(**args)
            model.load_state_dict(state)
        except (RuntimeError, TypeError, ValueError, KeyError, AttributeError):
            raise CheckpointError(
                f"{path.name} does not match the {self.model.__name__} model; "
                f"rebuild it with: {self.command}"
            ) from None
        return model.eval().to(device or default_device()), config

    def load(
        self, path: Path | str | None = None, device: torch.device | str | None = None
    ) -> nn.Module:
        """The model of the file (default: the shipped one), in eval mode on `device` (default:
        the course's). A missing, corrupt or mismatched file names the command rebuilding it."""
        return self.load_with_config(path, device)[0]


def digest(model: nn.Module) -> str:
    """sha256 of a model's weights, names and values: which model a file of samples came from."""
    sha = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        sha.update(name.encode())
        sha.update(value.detach().cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()


def cached(file: str, make: Callable[[], T], valid: Callable[[object], bool]) -> T:
    """`make()`'s value, computed once and kept in data/cache/<file> (git-ignored). A cache that
    is unreadable or fails `valid` (stale: another size or seed; truncated) is made anew."""
    path = CACHE_DIR / file
    if path.is_file():
        try:
            value = torch.load(path, map_location="cpu", weights_only=True)
            if valid(value):
                return value
        except Exception:  # a stale or truncated cache is simply rebuilt
            pass
    value = make()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    torch.save(value, path)
    return value
