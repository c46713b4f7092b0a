"""The default segmenter, ``foreground``: a U-Net trained on copy-paste composites to find objects it never saw,
shipped inside the package as an fp16 checkpoint (``segmentation/weights/foreground_lite0.pt``).

``lookalike index DIR --mask`` (no name) masks with it. ``benchmarks/train_default_segmenter.py`` reproduces the
checkpoint (COIL-20 objects 1-10 and Weizmann training horses pasted onto Weizmann and LFW photos, see
:mod:`segmentation.composites`); ``benchmarks/bench_default_segmenter.py`` measures it on unseen objects and
backgrounds.

Specs: ``foreground`` (the packaged network); ``foreground:grabcut`` adds a GrabCut pass started from the
network's mask (:func:`refine_with_grabcut`: confident pixels fixed, the uncertain band re-decided by colour).
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import torch

from retrieval.checkpoint import load_checkpoint, save_checkpoint

from .base import SEGMENTERS
from .classical import MIN_GMM_SAMPLES, as_rgb_uint8, downscale, too_plain, upscale_mask, whole_image
from .unet import UNet, load_unet, predict_logits

log = logging.getLogger(__name__)

#: The segmenter's registered name; ``--mask`` without a name means it.
NAME = "foreground"
#: The packaged checkpoint, relative to the ``segmentation`` package.
WEIGHTS_RESOURCE = "weights/foreground_lite0.pt"
#: Where the packaged checkpoint lives in a source checkout (what the training script writes).
PACKAGED_WEIGHTS = Path(__file__).resolve().parent / WEIGHTS_RESOURCE
#: What the checkpoint's absence or damage asks the person to do.
REMEDY = (
    "reinstall lookalike (the checkpoint ships inside the package), or rebuild it with "
    "`python -m benchmarks.train_default_segmenter`; meanwhile --mask grabcut needs no weights"
)


def export_fp16(src: str | Path, dst: str | Path) -> int:
    """Write the U-Net checkpoint ``src`` again at ``dst`` with its floating-point tensors in fp16 (half the
    size; loading casts them back to the network's fp32) and its training record without the optimiser.
    Returns the size of ``dst`` in bytes."""
    ck = load_checkpoint(src)
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in ck["state_dict"].items()}
    train = {k: v for k, v in ck.get("train", {}).items() if k not in ("optimizer", "rng")}
    save_checkpoint(dst, ck["model_config"], state, train)
    size = Path(dst).stat().st_size
    log.info("exported %s -> %s (fp16, %.1f MB)", src, dst, size / 1e6)
    return size


def packaged_weights(stack: ExitStack) -> Path:
    """A file path of the packaged checkpoint, valid while ``stack`` is open (``importlib.resources``: works
    from a wheel or a zip as well as from a source checkout)."""
    return stack.enter_context(resources.as_file(resources.files("segmentation").joinpath(WEIGHTS_RESOURCE)))


def load_foreground(weights: str | Path | None = None, device: str = "auto") -> UNet:
    """The default segmenter's network (``weights``: another checkpoint of the same kind; default: the packaged
    one). A missing or unreadable checkpoint raises ``FileNotFoundError`` / ``ValueError`` saying what to do."""
    with ExitStack() as stack:
        path = Path(weights) if weights is not None else packaged_weights(stack)
        if not path.is_file():
            raise FileNotFoundError(f"the {NAME} segmenter's checkpoint is missing ({path}): {REMEDY}")
        try:
            return load_unet(path, device)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise ValueError(f"the {NAME} segmenter's checkpoint {path} cannot be read ({exc}): {REMEDY}") from None


@dataclass(frozen=True)
class RefineConfig:
    """GrabCut started from the network's mask, on a ``max_side`` copy, ``iterations`` rounds.

    Pixels farther than ``band`` (a share of the shorter side) inside the network's mask are fixed foreground,
    farther outside it fixed background; GrabCut re-decides the band between, starting from the network's
    answer (probable foreground / background).
    """

    max_side: int = 200
    iterations: int = 3
    band: float = 0.04
    seed: int = 0


def refine_with_grabcut(pixels: np.ndarray, mask: np.ndarray, config: RefineConfig = RefineConfig()) -> np.ndarray:
    """``(H, W, 3) uint8`` + the network's ``(H, W) bool`` mask -> the refined ``(H, W) bool`` mask (the
    network's mask unchanged when it is empty, full, or leaves GrabCut too few pixels of a kind)."""
    rgb = as_rgb_uint8(pixels)
    shape = rgb.shape[:2]
    small = downscale(rgb, config.max_side)
    if too_plain(small):
        return mask
    h, w = small.shape[:2]
    start = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    if not start.any() or start.all():
        return mask
    radius = max(1, round(config.band * min(h, w)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    inner = cv2.erode(start, kernel).astype(bool)
    outer = cv2.dilate(start, kernel).astype(bool)
    labels = np.where(start > 0, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    labels[inner] = cv2.GC_FGD
    labels[~outer] = cv2.GC_BGD
    fg = np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD))
    if min(int(fg.sum()), int((~fg).sum())) < MIN_GMM_SAMPLES:
        return mask
    cv2.setRNGSeed(config.seed)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(small, labels, None, bgd, fgd, max(1, config.iterations), cv2.GC_INIT_WITH_MASK)
    refined = np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD))
    return upscale_mask(refined, shape)


class ForegroundSegmenter:
    """The default segmenter: ``(H, W, 3) uint8 -> (H, W) bool``, the packaged network's mask (sigmoid above
    ``threshold`` at the longest side it was trained at), refined by GrabCut when ``refine`` is ``"grabcut"``."""

    def __init__(
        self,
        refine: str | None = None,
        weights: str | Path | None = None,
        threshold: float = 0.5,
        device: str = "auto",
    ) -> None:
        if refine not in (None, "grabcut"):
            raise ValueError(f"unknown {NAME} option {refine!r}; known: {NAME} (the network alone), {NAME}:grabcut")
        self.net = load_foreground(weights, device)
        self.image_size = self.net.config.image_size
        self.threshold = threshold
        self.refine = refine
        self.spec = NAME if refine is None else f"{NAME}:{refine}"
        log.info("%s segmenter at %d px on %s", self.spec, self.image_size, next(self.net.parameters()).device)

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """``(H, W, 3) uint8 -> (H, W) float32``: the network's foreground probability per pixel."""
        return torch.sigmoid(predict_logits(self.net, pixels, self.image_size)).cpu().numpy()

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        rgb = as_rgb_uint8(pixels)
        if min(rgb.shape[:2]) < 2:
            return whole_image(rgb.shape[:2])
        mask = self.probabilities(rgb) > self.threshold
        return refine_with_grabcut(rgb, mask) if self.refine == "grabcut" else mask


@SEGMENTERS.register(NAME)
def _foreground_segmenter(arg: str | None) -> ForegroundSegmenter:
    return ForegroundSegmenter(refine=arg.strip().lower() if arg else None)
