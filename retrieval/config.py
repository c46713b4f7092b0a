"""Typed configuration of the embedding model.

A :class:`ModelConfig` says which vectors a model makes: two equal configs give interchangeable vectors.
It is stored with every collection (and in checkpoints) so a collection always knows which model made
its vectors. Run-time choices that do not change the vectors much (device, batch size, workers) live in
:class:`RuntimeOptions` instead.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "efficientnet_lite0"
    #: "imagenet" (pretrained), "random" (tests), or a path to a state-dict / checkpoint file.
    weights: str = "imagenet"
    pooling: str = "gem"
    gem_p: float = 3.0
    rmac_levels: int = 3
    #: Images are resized so that their longest side is this many pixels (no centre crop).
    image_size: int = 224
    #: Relative scales of multi-scale extraction; descriptors of each scale are summed, then L2-normalised.
    scales: tuple[float, ...] = (1.0,)
    #: Output size of the network's own whitening layer (a linear map + L2 after pooling, trained with the
    #: network or learned from matching pairs after training); 0: no such layer. Set by trained checkpoints.
    whitening_layer: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        if self.image_size < 32:
            raise ValueError(f"image_size must be at least 32, got {self.image_size}")
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"scales must be positive, got {self.scales}")
        if self.whitening_layer < 0:
            raise ValueError(f"whitening_layer must be 0 (none) or a dimension, got {self.whitening_layer}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["scales"] = list(self.scales)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return cls(**{**d, "scales": tuple(d.get("scales", (1.0,)))})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def describe(self) -> str:
        scales = ",".join(f"{s:g}" for s in self.scales)
        whiten = f" + whitening to {self.whitening_layer}" if self.whitening_layer else ""
        return f"{self.backbone}[{self.weights}] + {self.pooling}{whiten} @ {self.image_size}px scales {scales}"


#: The device names :class:`RuntimeOptions` accepts (``cuda:N`` too).
DEVICES = ("auto", "cpu", "cuda", "mps")
_DEVICE = re.compile(r"(auto|cpu|mps|cuda(:\d+)?)")


def available_devices() -> list[str]:
    """The devices this machine can run on, e.g. ``["cpu", "cuda", "cuda:0"]`` (imports torch)."""
    import torch

    out = ["cpu"]
    if torch.cuda.is_available():
        out += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


def check_device(device: str) -> str:
    """``device`` when it is one of auto, cpu, cuda, cuda:N, mps (checked without importing torch); else a
    ``ValueError`` that says which names are accepted and which devices this machine has."""
    if _DEVICE.fullmatch(device):
        return device
    raise ValueError(
        f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps "
        f"(available here: {', '.join(available_devices())})"
    )


#: Precisions of the network's forward pass: fp32, or autocast to bf16 / fp16 (fp16: GPUs only).
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class RuntimeOptions:
    #: "auto" (CUDA, then MPS, then CPU), "cpu", "cuda", "cuda:1", "mps".
    device: str = "auto"
    #: Images per network batch; ``None``: chosen for the device the network runs on (:func:`device_plan`).
    batch_size: int | None = None
    #: Threads decoding images in parallel (0 decodes in the calling thread between batches); ``None``: chosen
    #: for the device (:func:`device_plan`).
    workers: int | None = None
    #: "fp32", "bf16" or "fp16" (autocast; channels_last either way). fp16 only on a GPU.
    precision: str = "fp32"

    def __post_init__(self) -> None:
        check_device(self.device)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be 0 or more, got {self.workers}")


#: Batch size and decoding threads when none are given, by the type of device the network runs on. On a CPU
#: the network is the bottleneck and decoding threads compete with it for the cores; on a GPU decoding is the
#: bottleneck, so it gets up to 16 threads (at most the machine's cores) and bigger batches keep the GPU busy.
DEFAULT_BATCH = {"cpu": 32, "cuda": 128, "mps": 64}
DEFAULT_WORKERS = {"cpu": 2, "cuda": 16, "mps": 8}


@dataclass(frozen=True)
class DevicePlan:
    """How the network runs on one device type: what :class:`RuntimeOptions` asked for, with what was left to
    the device filled in (see :func:`device_plan`)."""

    device_type: str  # "cpu" | "cuda" | "mps"
    batch_size: int
    workers: int
    precision: str  # "fp32" | "bf16" | "fp16"
    #: Batches are copied to the device from page-locked (pinned) memory, asynchronously (CUDA only).
    pin_memory: bool
    non_blocking: bool
    #: torch dtype name autocast runs in (``"bfloat16"``, ``"float16"``), or ``None`` for plain fp32.
    autocast_dtype: str | None

    def describe(self) -> str:
        return f"{self.precision}, batch {self.batch_size}, {self.workers} decoding threads"


def device_plan(device_type: str, runtime: RuntimeOptions, cpu_count: int | None = None) -> DevicePlan:
    """The batch size, decoding threads, copies and autocast for running on a ``device_type`` (``"cpu"``,
    ``"cuda"``, ``"mps"``) device: what ``runtime`` gives, and for what it leaves ``None``, the defaults of
    :data:`DEFAULT_BATCH` / :data:`DEFAULT_WORKERS` (decoding threads at most ``cpu_count``, default: this
    machine's cores, and at least 2). A pure function: nothing is imported or probed.

    Raises ``ValueError`` for fp16 on a CPU (no fast fp16 kernels there: use bf16 or fp32).
    """
    import os

    if device_type not in DEFAULT_BATCH:
        raise ValueError(f"unknown device type {device_type!r}; known: {', '.join(DEFAULT_BATCH)}")
    if runtime.precision == "fp16" and device_type == "cpu":
        raise ValueError("fp16 runs on a GPU only; on the CPU use --precision bf16 or fp32")
    cores = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    workers = runtime.workers
    if workers is None:
        workers = (
            DEFAULT_WORKERS[device_type] if device_type == "cpu" else max(2, min(DEFAULT_WORKERS[device_type], cores))
        )
    gpu = device_type == "cuda"
    return DevicePlan(
        device_type=device_type,
        batch_size=runtime.batch_size if runtime.batch_size is not None else DEFAULT_BATCH[device_type],
        workers=workers,
        precision=runtime.precision,
        pin_memory=gpu,
        non_blocking=gpu,
        autocast_dtype={"fp32": None, "bf16": "bfloat16", "fp16": "float16"}[runtime.precision],
    )
