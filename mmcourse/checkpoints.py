"""Small trained weights shipped under data/, each rebuilt from its seed by a repo command.

A checkpoint is a plain dict {"state_dict", "config", "command"} saved with torch.save and read
back with `torch.load(..., weights_only=True)`, so loading never runs pickled code.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


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


def restore(
    ckpt: dict,
    model_class: type[nn.Module],
    *,
    path: Path,
    command: str,
    build: Callable[[dict], nn.Module] | None = None,
) -> nn.Module:
    """The model of a checkpoint read by `load`: built from its config (`model_class(**config)`
    unless `build(config)` is given) with its weights, in eval mode. A checkpoint that does not fit
    the model raises CheckpointError naming the model and the command that rebuilds the file."""
    build = build or (lambda config: model_class(**config))
    try:
        model = build(dict(ckpt["config"]))
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, TypeError, ValueError, KeyError):
        raise CheckpointError(
            f"{Path(path).name} does not match the {model_class.__name__} model; "
            f"rebuild it with: {command}"
        ) from None
    return model.eval()
