"""What a person asks for (model, masking, index options), turned into the library's typed configurations
and the parts they build.

Options arrive as overrides of a base configuration: ``None`` means "not given, keep the base's". A
checkpoint written by ``lookalike train`` brings its own architecture. Every mistake raises
:class:`SettingsError`, whose message says what to fix.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from retrieval import config as retrieval_config
from retrieval.config import ModelConfig, RuntimeOptions
from retrieval.registry import UnknownNameError

from .errors import SettingsError
from .masking import Masker, MaskSettings

if TYPE_CHECKING:  # torch: imported where weights are read or a network is built, so commands start fast
    from retrieval.model import Embedder

T = TypeVar("T")

#: The fields of a trained network's configuration that come with its checkpoint unless overridden
#: (its whitening layer always does: it is part of the trained network).
TRAINED_ARCHITECTURE = ("backbone", "pooling", "gem_p", "rmac_levels", "image_size")


def settings_with(base: T, **overrides: Any) -> T:
    """The dataclass ``base`` with the ``overrides`` that are not ``None``."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return dataclasses.replace(base, **given)  # type: ignore[type-var]
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def model_config_with(base: ModelConfig | None = None, **overrides: Any) -> ModelConfig:
    """``base`` (default: :class:`ModelConfig`'s defaults) with the ``overrides`` that are not ``None``.

    ``weights`` is ``"imagenet"``, ``"random"`` or a file, made absolute (a collection outlives the working
    folder). A checkpoint written by ``lookalike train`` brings its architecture (:data:`TRAINED_ARCHITECTURE`,
    unless overridden) and its whitening layer; other weights have no whitening layer.
    Example: ``model_config_with(None, weights="net.pt", scales=(1, 0.707))``.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    weights = given.get("weights")
    if weights is not None:
        given["whitening_layer"] = 0
        if weights not in ("imagenet", "random"):
            weights = given["weights"] = str(Path(weights).expanduser().resolve())
            from retrieval.checkpoint import is_checkpoint_dict, load_weights_file
            from retrieval.model import check_embedding_checkpoint

            try:  # a file that cannot be read is said so now, before anything is built or recorded
                loaded = load_weights_file(weights)
            except (OSError, ValueError) as exc:
                raise SettingsError(str(exc)) from None
            checkpoint = loaded if is_checkpoint_dict(loaded) else None
            if checkpoint is not None:  # a network trained by lookalike, not a plain state dict
                try:
                    check_embedding_checkpoint(checkpoint, weights)
                except ValueError as exc:
                    raise SettingsError(str(exc)) from None
                trained = checkpoint["model_config"]
                for key in TRAINED_ARCHITECTURE:
                    given.setdefault(key, trained[key])
                given["whitening_layer"] = trained.get("whitening_layer", 0)
    return settings_with(base or ModelConfig(), **given)


def mask_settings_with(base: MaskSettings, segmenter: str | None = None, apply: str | None = None) -> MaskSettings:
    """``base`` with another segmenter spec (``"none"``: whole images) and/or another way of applying masks.
    A ``unet:CHECKPOINT`` path is made absolute (a collection outlives the working folder)."""
    if segmenter is None:
        segmenter = base.segmenter
    elif segmenter.lower() == "none":
        segmenter = None
    if segmenter and segmenter.startswith("unet:"):
        segmenter = "unet:" + str(Path(segmenter[5:]).expanduser().resolve())
    try:
        return dataclasses.replace(base, segmenter=segmenter, apply=apply or base.apply)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def build_masker(settings: MaskSettings, factory: Callable[[MaskSettings], Masker] = Masker) -> Masker | None:
    """The :class:`Masker` of ``settings`` (made by ``factory``); ``None`` when they mask nothing."""
    if not settings.enabled:
        return None
    try:
        return factory(settings)
    except (UnknownNameError, OSError, ValueError, RuntimeError) as exc:
        raise SettingsError(f"cannot build the segmenter {settings.segmenter!r}: {exc}") from None


def build_embedder(model: ModelConfig, runtime: RuntimeOptions | None = None) -> Embedder:
    """The network of ``model`` on ``runtime``'s device (an unknown backbone, a missing or mismatched weights
    file, a bad device or precision raise :class:`SettingsError`)."""
    from retrieval.model import Embedder

    check_device_available(runtime.device if runtime is not None else "auto")
    try:
        return Embedder(model, runtime)
    except (UnknownNameError, OSError, ValueError, RuntimeError) as exc:  # UnknownNameError is a KeyError
        raise SettingsError(str(exc)) from None
    except (pickle.UnpicklingError, KeyError, EOFError) as exc:  # torch.load on a file that is not weights
        message = _unreadable_weights(model.weights)  # (torch's advice to load it unsafely is never passed on)
        if message is None:
            raise
        raise SettingsError(message) from exc


def _unreadable_weights(weights: str) -> str | None:
    """Why the weights file cannot be read; ``None`` when it can (or ``weights`` names no file)."""
    if weights in ("imagenet", "random"):
        return None
    from retrieval.checkpoint import load_weights_file

    try:
        load_weights_file(weights)
    except (OSError, ValueError) as exc:
        return str(exc)
    return None


def check_device_available(device: str) -> None:
    """Raise :class:`SettingsError` when ``device`` (already a valid name, see
    :func:`retrieval.config.check_device`) is not on this machine, naming the devices that are."""
    if device == "auto" or device == "cpu":
        return
    available = retrieval_config.available_devices()
    if device not in available:
        raise SettingsError(f"device {device!r} is not available here; available: {', '.join(available)}")


def describe_devices() -> list[str]:
    """What ``lookalike models`` says about devices: those this machine has, where ``--device auto`` runs the
    network and how (:func:`retrieval.config.device_plan`), and where searches run by default
    (:func:`indexer.vector_index.choose_search_backend`) for a flat / IVF and for an HNSW index."""
    import torch

    from retrieval.model import resolve_device

    from .vector_index import choose_search_backend, faiss_gpu_available, torch_cuda_available

    names = []
    for device in retrieval_config.available_devices():
        if device.startswith("cuda:"):
            device += f" ({torch.cuda.get_device_name(int(device[5:]))})"
        if device != "cuda":
            names.append(device)
    auto = resolve_device("auto")
    plan = retrieval_config.device_plan(auto.type, RuntimeOptions())
    has = dict(faiss_gpu=faiss_gpu_available(), torch_cuda=torch_cuda_available())
    flat, hnsw = choose_search_backend("auto", True, **has), choose_search_backend("auto", False, **has)
    return [
        "devices: " + ", ".join(names),
        f"--device auto: {auto} ({plan.describe()})",
        f"search: flat / IVF index on {flat}, HNSW on {hnsw} (FAISS GPU support: "
        + ("yes" if has["faiss_gpu"] else "no; `pip install -e '.[gpu]'`, see README, GPU")
        + ")",
    ]


__all__ = [
    "TRAINED_ARCHITECTURE",
    "SettingsError",
    "build_embedder",
    "build_masker",
    "check_device_available",
    "describe_devices",
    "mask_settings_with",
    "model_config_with",
    "settings_with",
]
