"""The embedding network: backbone -> pooling -> L2, with multi-scale extraction, and its CPU/GPU runner."""

from __future__ import annotations

import dataclasses
import logging
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backbones import build_backbone
from .checkpoint import is_checkpoint_file, load_checkpoint
from .config import DevicePlan, ModelConfig, RuntimeOptions, device_plan
from .efficientnet_lite import cpu_has_fast_bf16
from .functional import l2n
from .pooling import RMAC, build_pooling

log = logging.getLogger(__name__)


def check_embedding_checkpoint(checkpoint: dict, path: object) -> None:
    """Raise ``ValueError`` (naming ``path``) when a lookalike checkpoint holds another kind of network, e.g. a
    U-Net from ``lookalike train-seg`` (its ``model_config`` has a ``kind``; embedding networks' has none)."""
    kind = checkpoint["model_config"].get("kind")
    if kind is not None:
        raise ValueError(
            f"{path} holds a {kind} segmentation network, not an embedding network; "
            "pass a checkpoint written by `lookalike train` (or imagenet)"
        )


class EmbeddingNet(nn.Module):
    """Pixels ``(N, 3, H, W)`` in ``[0, 255]`` (uint8 or float) -> L2-normalised descriptors ``(N, D)``.

    The network owns its input normalisation, so callers hand it plain RGB pixels.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        checkpoint = None
        if config.weights not in ("imagenet", "random") and is_checkpoint_file(config.weights):
            checkpoint = load_checkpoint(config.weights)  # a network trained by lookalike: load all of it below
        bb = build_backbone(config.backbone, "random" if checkpoint is not None else config.weights)
        self.backbone = bb.module
        self.pool = build_pooling(config.pooling, config.gem_p, config.rmac_levels)
        self.out_dim = bb.out_channels
        self.whiten: nn.Linear | None = None
        if config.whitening_layer:
            self.whiten = nn.Linear(bb.out_channels, config.whitening_layer)
            self.out_dim = config.whitening_layer
        self.register_buffer("mean", torch.tensor(bb.mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(bb.std).view(1, 3, 1, 1) * 255.0, persistent=False)
        if checkpoint is not None:
            check_embedding_checkpoint(checkpoint, config.weights)
            trained = ModelConfig.from_dict(checkpoint["model_config"])
            if (trained.backbone, trained.pooling) != (config.backbone, config.pooling):
                raise ValueError(
                    f"{config.weights} holds a {trained.backbone} + {trained.pooling} network; "
                    f"use --backbone {trained.backbone} --pooling {trained.pooling}"
                )
            if trained.whitening_layer != config.whitening_layer:
                raise ValueError(
                    f"{config.weights} has a whitening layer of {trained.whitening_layer} dimensions, "
                    f"the configuration asks for {config.whitening_layer}"
                )
            self.load_trained_state(checkpoint["state_dict"])

    def load_trained_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a trained state dict, including R-MAC's regional whitening when it has one."""
        if "pool.region_proj" in state and isinstance(self.pool, RMAC):
            self.pool.set_region_whitening(state["pool.region_shift"], state["pool.region_proj"])
        if "whiten.weight" in state and (
            self.whiten is None or self.whiten.weight.shape != state["whiten.weight"].shape
        ):
            out_dim, in_dim = state["whiten.weight"].shape
            self.set_whitening(np.zeros(in_dim, np.float32), np.zeros((out_dim, in_dim), np.float32))
        self.load_state_dict(state)

    def set_whitening(self, shift: torch.Tensor | np.ndarray, proj: torch.Tensor | np.ndarray) -> None:
        """Make the whitening layer ``l2n(proj @ (x - shift))``: ``shift (C,)``, ``proj (d, C)``; the output
        dimension becomes ``d`` and ``config.whitening_layer`` says so."""
        shift_t = torch.as_tensor(np.asarray(shift), dtype=torch.float32)
        proj_t = torch.as_tensor(np.asarray(proj), dtype=torch.float32)
        layer = nn.Linear(proj_t.shape[1], proj_t.shape[0]).to(self.mean.device)
        with torch.no_grad():
            layer.weight.copy_(proj_t)
            layer.bias.copy_(-(proj_t @ shift_t))
        self.whiten = layer
        self.out_dim = int(proj_t.shape[0])
        self.config = dataclasses.replace(self.config, whitening_layer=self.out_dim)

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels.float() - self.mean) / self.std

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images ``(N, 3, H, W)`` -> feature map ``(N, C, h, w)``."""
        return self.backbone(x)

    def forward(self, pixels: torch.Tensor, mask: torch.Tensor | None = None, whiten: bool = True) -> torch.Tensor:
        """``(N, 3, H, W)`` pixels, optional foreground ``mask (N, 1, H, W)`` -> ``(N, D)`` unit vectors.

        ``whiten=False`` stops before the whitening layer: ``-> (N, C)``, the pooled descriptors.
        """
        x = self.normalise(pixels)
        total: torch.Tensor | None = None
        for scale in self.config.scales:
            xs, ms = x, mask
            if scale != 1.0:
                size = (max(32, round(x.shape[-2] * scale)), max(32, round(x.shape[-1] * scale)))
                xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
                ms = None if mask is None else F.interpolate(mask.float(), size=size, mode="area")
            desc = l2n(self.pool(self.features(xs), ms).float())
            total = desc if total is None else total + desc
        assert total is not None
        total = l2n(total)
        if whiten and self.whiten is not None:
            total = l2n(self.whiten(total))
        return total


def resolve_device(device: str) -> torch.device:
    """``"auto"`` picks CUDA, then Apple MPS, then the CPU; anything else is passed to ``torch.device``."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was asked for but CUDA is not available; use --device cpu")
    return dev


def to_device(t: torch.Tensor, device: torch.device, *, pin: bool | None = None) -> torch.Tensor:
    """``t`` on ``device``; to a CUDA device from page-locked memory and asynchronously (``non_blocking``), so
    the copy overlaps the host's work until the result is used. ``pin=None``: pin when ``device`` is CUDA."""
    if t.device == device or device.type != "cuda":
        return t.to(device)
    if (pin is None or pin) and t.device.type == "cpu" and not t.is_pinned():
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


class Embedder:
    """Runs an :class:`EmbeddingNet` on a device: numpy pixels in, numpy float32 vectors out.

    ``embed_batch`` takes one batch of same-sized images ``(N, H, W, 3)`` uint8 and returns ``(N, D)``.
    :attr:`plan` says how it runs there (batch size, decoding threads, pinned copies, autocast), from
    :func:`retrieval.config.device_plan`.
    """

    def __init__(
        self, config: ModelConfig, runtime: RuntimeOptions | None = None, net: EmbeddingNet | None = None
    ) -> None:
        self.config = config
        self.runtime = runtime or RuntimeOptions()
        self.device = resolve_device(self.runtime.device)
        self.plan: DevicePlan = device_plan(self.device.type, self.runtime)
        self.net = (net or EmbeddingNet(config)).eval()
        fuse = getattr(self.net.backbone, "fuse_bn_", None)
        if fuse is not None:
            fuse()  # fold BatchNorm into the convolutions: same outputs, about a third less CPU time
        self.net = self.net.to(self.device, memory_format=torch.channels_last)
        if self.plan.precision == "bf16" and self.device.type == "cpu" and not cpu_has_fast_bf16():
            log.warning("this CPU has no native bf16 support: bf16 will be much slower than fp32 here")
        if self.plan.precision == "bf16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            log.warning("this GPU has no bf16 support: use --precision fp16 or fp32")
        self.dim = self.net.out_dim
        log.info("embedding with %s on %s", config.describe(), self.describe_device())

    def describe_device(self) -> str:
        """Where and how the network runs, e.g. ``"cuda:0 (NVIDIA H200; fp32, batch 128, 16 decoding threads)"``."""
        where = str(self.device)
        if self.device.type == "cuda":
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            where = f"cuda:{index} ({torch.cuda.get_device_name(index)}; {self.plan.describe()})"
        else:
            where = f"{where} ({self.plan.describe()})"
        return where

    def stack_batch(self, images: list[np.ndarray]) -> np.ndarray:
        """Same-sized ``(H, W, 3)`` images -> one ``(N, H, W, 3)`` batch, stacked straight into page-locked
        memory when batches go to a CUDA device (the copy to the GPU is then one asynchronous transfer)."""
        if not self.plan.pin_memory or not images:
            return np.stack(images)
        first = np.asarray(images[0])
        buf = torch.empty((len(images), *first.shape), dtype=torch.uint8, pin_memory=True)
        out = buf.numpy()  # shares the pinned memory and keeps it alive
        np.stack(images, out=out)
        return out

    def _autocast(self):
        if self.plan.autocast_dtype is not None:
            return torch.autocast(self.device.type, dtype=getattr(torch, self.plan.autocast_dtype))
        return nullcontext()

    @torch.inference_mode()
    def feature_map(self, pixels: np.ndarray) -> np.ndarray:
        """``(N, H, W, 3)`` uint8 RGB -> the backbone's feature map ``(N, C, h, w)`` float32 (before pooling):
        what each part of the picture contributes, for showing where two pictures match."""
        pixels = pixels if pixels.flags.writeable else pixels.copy()  # torch wants memory it may write
        t = to_device(torch.as_tensor(np.ascontiguousarray(pixels)), self.device).permute(0, 3, 1, 2)
        with self._autocast():
            out = self.net.features(self.net.normalise(t))
        return out.float().cpu().numpy()

    @torch.inference_mode()
    def embed_batch(self, pixels: np.ndarray | torch.Tensor, mask: np.ndarray | None = None) -> np.ndarray:
        """``(N, H, W, 3)`` uint8 RGB -> ``(N, D)`` float32 unit vectors."""
        if isinstance(pixels, np.ndarray) and not pixels.flags.writeable:
            pixels = pixels.copy()  # e.g. a view of a decoded PIL image; torch wants memory it may write
        t = torch.as_tensor(pixels)
        if t.dim() != 4 or t.shape[-1] != 3:
            raise ValueError(f"expected (N, H, W, 3) pixels, got {tuple(t.shape)}")
        pin = self.plan.pin_memory
        t = to_device(t, self.device, pin=pin).permute(0, 3, 1, 2)  # NHWC storage == channels_last NCHW
        m = (
            None
            if mask is None
            else to_device(torch.as_tensor(mask, dtype=torch.float32), self.device, pin=pin)[:, None]
        )
        with self._autocast():
            out = self.net(t, m)
        return out.float().cpu().numpy().astype(np.float32, copy=False)
