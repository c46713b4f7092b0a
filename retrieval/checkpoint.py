"""Checkpoints of trained embedding networks: tensors and plain data only, loadable with ``weights_only=True``.

A checkpoint is a dict ``{"format": "lookalike-checkpoint", "version": 1, "model_config": {...},
"state_dict": {...}, "train": {...}}`` saved atomically. ``model_config`` is the configuration of the
network that was trained (its ``weights`` field names what it started from); ``train`` carries the training
configuration, the epoch, the validation history, and, in resumable checkpoints, the optimiser state.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "lookalike-checkpoint"

log = logging.getLogger(__name__)


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


class WeightsFileError(ValueError):
    """A file that is not a weights file lookalike can read; the message says why and what to pass instead."""


def load_weights_file(path: str | Path) -> Any:
    """What a weights file holds, loaded safely (tensors and plain data only, never arbitrary pickled objects).

    Raises ``FileNotFoundError`` when there is no such file, and :class:`WeightsFileError` (a ``ValueError``)
    when the file is not a PyTorch file, or holds objects that cannot be loaded safely; its message says
    what lookalike reads instead. Torch's own advice in that case (to load unsafely) is never passed on.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if _looks_like_torch_file(path):
            raise WeightsFileError(
                f"{path} is not a weights file lookalike can read: it holds Python objects besides tensors and "
                f"plain data ({_first_line(exc)}); pass a checkpoint from `lookalike train`, or a state dict "
                "saved with torch.save(model.state_dict(), FILE)"
            ) from None
        raise WeightsFileError(_not_weights(path)) from None
    except (RuntimeError, EOFError, KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        log.debug("torch.load(%s) failed", path, exc_info=True)
        if isinstance(exc, RuntimeError) and _looks_like_torch_file(path):
            raise WeightsFileError(f"{path} is a damaged or unsupported PyTorch file ({_first_line(exc)})") from None
        raise WeightsFileError(_not_weights(path)) from None


def _not_weights(path: Path) -> str:
    return (
        f"{path} is not a weights file lookalike can read (not a PyTorch file); pass a checkpoint from "
        "`lookalike train`, a state dict saved with torch.save, imagenet or random"
    )


def _looks_like_torch_file(path: Path) -> bool:
    """A zip archive (torch.save's format) or a pickle (the legacy format)."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def _first_line(exc: BaseException) -> str:
    """The gist of torch's message, without its advice to load the file unsafely."""
    for line in str(exc).splitlines():
        line = line.strip()
        if line and "weights_only" not in line and not line.startswith(("Weights only load failed", "(1)", "(2)")):
            return line.split(". ", 1)[0].rstrip(".")
    return exc.__class__.__name__


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load safely (no arbitrary pickles); raises ``ValueError`` if the file is not one of our checkpoints."""
    obj = load_weights_file(path)
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
