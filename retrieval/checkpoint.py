"""Checkpoints of trained embedding networks: tensors and plain data only, loadable with ``weights_only=True``.

A checkpoint is a dict ``{"format": "lookalike-checkpoint", "version": 1, "model_config": {...},
"state_dict": {...}, "train": {...}}`` saved atomically. ``model_config`` is the configuration of the
network that was trained (its ``weights`` field names what it started from); ``train`` carries the training
configuration, the epoch, the validation history, and, in resumable checkpoints, the optimiser state.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "lookalike-checkpoint"


def save_checkpoint(
    path: str | Path,
    model_config: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    train: dict[str, Any] | None = None,
) -> None:
    """Write atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": 1,
        "model_config": model_config,
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in state_dict.items()},
        "train": train or {},
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load safely (no arbitrary pickles); raises ``ValueError`` if the file is not one of our checkpoints."""
    obj = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
    if not is_checkpoint_dict(obj):
        raise ValueError(f"{path} is not a lookalike checkpoint")
    return obj


def is_checkpoint_dict(obj: object) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT and "state_dict" in obj


def read_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """The checkpoint at ``path``, or ``None`` when ``path`` is not one of ours (missing, not a torch file, a
    plain state dict, or not loadable safely)."""
    try:
        obj = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001  (not a file, not a torch file, or not loadable safely)
        return None
    return obj if is_checkpoint_dict(obj) else None


def is_checkpoint_file(path: str | Path) -> bool:
    return read_checkpoint(path) is not None
