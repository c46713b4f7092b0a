"""Copy-paste composites: objects with known masks pasted onto real photos, drawn on the fly from a seed.

The training data of the default ``foreground`` segmenter, and the pieces the benchmark sets are built from
(:mod:`benchmarks.composites` imports :func:`coil_object_mask`).

- A :class:`Cutout` is an object and its mask, cropped to its bounding box: a COIL-20 object cut from its black
  background (:func:`coil_object_mask`), or a photo's object from its figure-ground mask (Weizmann horses).
- A :class:`Background` is a photo, with the region of its own salient thing when known (a horse): a composite
  either keeps that thing as a *distractor* (background in the target mask: the pasted objects are the
  foreground) or removes it (a crop that avoids it, the rest inpainted).
- :func:`compose` pastes one to ``max_objects`` cutouts onto a background crop (scale, flips, colour jitter,
  grey objects tinted, later objects allowed to occlude earlier ones up to a limit, edges sometimes softened);
  the target is the union of the visible pasted pixels. Some draws are the photo alone with its own mask as the
  target (a horse photo without anything pasted: its horse is the object).
- :class:`CompositeSet` is a :class:`segmentation.training.MaskedImageSet`: ``load(i)`` draws composite ``i``
  of the current epoch from ``(seed, epoch, i)`` alone, so a set is reproducible, resumable, and new every
  epoch (the trainer calls :meth:`CompositeSet.set_epoch`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .data import MaskedImage, load_pair

#: COIL-20 file names: ``obj<O>__<P>.png``.
COIL_POSES = 72


# --------------------------------------------------------------------------------------------- cut-outs


@dataclass(frozen=True)
class Cutout:
    """An object cropped to its bounding box: ``pixels (h, w, 3) uint8``, ``mask (h, w) bool``; ``label`` names
    the object (``"coil:3"``, ``"horse:horse012"``), ``grey`` says the pixels have no colour of their own."""

    pixels: np.ndarray
    mask: np.ndarray
    label: str
    grey: bool = False


def coil_object_mask(
    gray: np.ndarray,
    threshold: int = 12,
    min_component_ratio: float = 0.05,
    close_size: int = 5,
    max_hole_fraction: float = 1.0,
) -> np.ndarray:
    """COIL-style grey image on black ``(H, W) uint8`` -> its object mask ``(H, W) bool``.

    ``gray > threshold``, a 3x3 opening, the connected components of at least ``min_component_ratio`` of the
    largest one's area, a ``close_size`` elliptical closing (0: none) and the enclosed holes smaller than
    ``max_hole_fraction`` of the frame filled (COIL's dark object parts are as black as its background).
    """
    raw = (gray > threshold).astype(np.uint8)
    opened = cv2.morphologyEx(raw, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=8)
    if n <= 1:
        return opened.astype(bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.flatnonzero(areas >= min_component_ratio * areas.max()) + 1
    mask = np.isin(labels, keep)
    if close_size > 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (close_size, close_size))
        mask |= cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, kernel).astype(bool)
    # holes: background components that do not touch the border
    nb, blabels, bstats, _ = cv2.connectedComponentsWithStats((~mask).astype(np.uint8), connectivity=4)
    h, w = mask.shape
    border = set(np.unique(np.concatenate([blabels[0], blabels[-1], blabels[:, 0], blabels[:, -1]])).tolist())
    small = [i for i in range(1, nb) if i not in border and bstats[i, cv2.CC_STAT_AREA] < max_hole_fraction * h * w]
    if small:
        mask |= np.isin(blabels, small)
    return mask


def crop_to_mask(pixels: np.ndarray, mask: np.ndarray, label: str, grey: bool = False) -> Cutout | None:
    """The :class:`Cutout` of ``mask``'s bounding box in ``pixels``; ``None`` when the mask is empty."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return Cutout(np.ascontiguousarray(pixels[y0:y1, x0:x1]), np.ascontiguousarray(mask[y0:y1, x0:x1]), label, grey)


def coil_path(coil_dir: str | Path, obj: int, pose: int) -> Path:
    return Path(coil_dir) / f"obj{obj}__{pose}.png"


def coil_cutouts(coil_dir: str | Path, objects: Sequence[int], poses: Sequence[int] | None = None) -> list[Cutout]:
    """Every pose found (or ``poses``) of COIL-20 ``objects`` in ``coil_dir``, cut from the black background."""
    out = []
    for obj in objects:
        if poses is None:
            files = sorted(Path(coil_dir).glob(f"obj{obj}__*.png"), key=lambda p: int(p.stem.rpartition("_")[2]))
            if not files:
                raise FileNotFoundError(f"no image of COIL object {obj} in {coil_dir} (obj{obj}__<pose>.png)")
        else:
            files = [coil_path(coil_dir, obj, pose) for pose in poses]
        for file in files:
            with Image.open(file) as im:
                gray = np.asarray(im.convert("L"))
            cut = crop_to_mask(np.repeat(gray[:, :, None], 3, axis=2), coil_object_mask(gray), f"coil:{obj}", True)
            if cut is not None:
                out.append(cut)
    return out


def shrink(pixels: np.ndarray, mask: np.ndarray | None, max_side: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Downscale ``(H, W, 3)`` pixels and their ``(H, W)`` mask (if any) so the longest side is <= ``max_side``."""
    h, w = pixels.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return pixels, mask
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    if mask is None:
        return small, None
    return small, cv2.resize(mask.astype(np.uint8) * 255, size, interpolation=cv2.INTER_LINEAR) > 127


def photo_cutouts(pairs: Sequence[MaskedImage], max_side: int = 256) -> list[Cutout]:
    """The object of each photo + mask pair (e.g. Weizmann horses), shrunk to ``max_side``."""
    out = []
    for pair in pairs:
        pixels, mask = shrink(*load_pair(pair), max_side)
        cut = crop_to_mask(pixels, mask, f"photo:{pair.image.stem}")  # type: ignore[arg-type]
        if cut is not None:
            out.append(cut)
    return out


# --------------------------------------------------------------------------------------------- backgrounds


@dataclass(frozen=True)
class Background:
    """A photo ``(H, W, 3) uint8``; ``thing`` the ``(H, W) bool`` region of its own salient object when known."""

    pixels: np.ndarray
    source: str
    thing: np.ndarray | None = None


def photo_backgrounds(pairs: Sequence[MaskedImage], max_side: int = 256) -> list[Background]:
    """Photos with their object's region (Weizmann horses: the horse), shrunk to ``max_side``."""
    out = []
    for pair in pairs:
        pixels, mask = shrink(*load_pair(pair), max_side)
        out.append(Background(pixels, pair.image.stem, mask))
    return out


def plain_backgrounds(paths: Sequence[str | Path], max_side: int = 256) -> list[Background]:
    """Photos whose salient thing has no mask (e.g. LFW: a person); it stays in every composite as a distractor."""
    out = []
    for path in paths:
        with Image.open(path) as im:
            pixels = np.asarray(im.convert("RGB"))
        out.append(Background(shrink(pixels, None, max_side)[0], Path(path).stem))
    return out


# --------------------------------------------------------------------------------------------- compositing


@dataclass(frozen=True)
class CompositeConfig:
    """How :func:`compose` draws one training composite (every share is a probability or an area fraction)."""

    #: Side of the square composites.
    size: int = 160
    #: Up to this many objects per composite (1 to ``max_objects``, fewer more likely).
    max_objects: int = 3
    #: Each object's bounding box covers this share of the image area (drawn log-uniform).
    min_cover: float = 0.04
    max_cover: float = 0.4
    #: Share of COIL-like (grey) cut-outs among the pasted objects when both kinds are given.
    grey_share: float = 0.75
    #: Grey objects are tinted with a random colour this often (so grey is not what makes an object).
    tint: float = 0.5
    #: Brightness / contrast jitter of pasted objects (factor in ``1 +- jitter``) and of the whole image.
    jitter: float = 0.3
    #: The whole composite turned grey this often (objects then stand out by shape and texture only).
    greyscale: float = 0.1
    #: Edges softened (a Gaussian alpha of sigma up to 1 px) this often.
    soften: float = 0.5
    #: A background with a known salient thing keeps it (as a distractor) this often; otherwise it is avoided
    #: by the crop and what is left of it inpainted.
    keep_thing: float = 0.5
    #: A photo with a known object is given alone, its object the target, this often.
    photo_alone: float = 0.15
    #: Later objects may hide at most this share of an earlier one.
    max_occlusion: float = 0.5
    #: The background crop's side as a share of the photo's shorter side.
    min_crop: float = 0.5

    def __post_init__(self) -> None:
        if self.size < 16 or self.max_objects < 1:
            raise ValueError("size must be at least 16 and max_objects at least 1")
        if not 0 < self.min_cover <= self.max_cover <= 1:
            raise ValueError(f"need 0 < min_cover <= max_cover <= 1, got {self.min_cover}, {self.max_cover}")


def crop_background(
    rng: np.random.Generator, background: Background, size: int, keep_thing: bool, min_crop: float
) -> tuple[np.ndarray, np.ndarray | None]:
    """A random square crop of ``background`` resized to ``size``: ``(size, size, 3) uint8`` and the crop's
    ``thing`` mask (``None`` when the photo has none, or when it was removed: the crop with the least of it
    among a few tries, the rest inpainted)."""
    pixels, thing = background.pixels, background.thing
    h, w = pixels.shape[:2]
    short = min(h, w)
    tries = 1 if thing is None or keep_thing else 8
    best: tuple[float, int, int, int] | None = None
    for _ in range(tries):
        side = int(short * rng.uniform(min_crop, 1.0))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        share = 0.0 if thing is None else float(thing[y : y + side, x : x + side].mean())
        if best is None or share < best[0]:
            best = (share, x, y, side)
    _, x, y, side = best  # type: ignore[misc]
    crop = cv2.resize(pixels[y : y + side, x : x + side], (size, size), interpolation=cv2.INTER_AREA)
    if thing is None:
        return crop, None
    region = cv2.resize(thing[y : y + side, x : x + side].astype(np.uint8) * 255, (size, size)) > 127
    if keep_thing:
        return crop, region
    if region.any():
        grown = cv2.dilate(region.astype(np.uint8), np.ones((7, 7), np.uint8))
        crop = cv2.inpaint(np.ascontiguousarray(crop), grown, 5, cv2.INPAINT_TELEA)
    return crop, None


def _jitter(rng: np.random.Generator, pixels: np.ndarray, amount: float) -> np.ndarray:
    """Brightness and contrast factors in ``1 +- amount``: ``(h, w, 3) uint8 -> float32``."""
    out = pixels.astype(np.float32)
    mean = out.mean()
    contrast = rng.uniform(1 - amount, 1 + amount)
    brightness = rng.uniform(1 - amount, 1 + amount)
    return (out - mean) * contrast + mean * brightness


def _place(
    rng: np.random.Generator, cut: Cutout, size: int, cover: float, flip: bool
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """``cut`` scaled so its box covers ``cover`` of a ``size`` square (capped to fit), maybe flipped ->
    pixels ``(oh, ow, 3) uint8``, mask ``(oh, ow) bool`` and a random top-left corner ``(x, y)``."""
    bh, bw = cut.mask.shape
    scale = min(float(np.sqrt(cover * size * size / (bh * bw))), size / bh, size / bw)
    oh, ow = max(2, min(size, round(bh * scale))), max(2, min(size, round(bw * scale)))
    pixels = cv2.resize(cut.pixels, (ow, oh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    mask = cv2.resize(cut.mask.astype(np.uint8) * 255, (ow, oh), interpolation=cv2.INTER_LINEAR) > 127
    if flip:
        pixels, mask = pixels[:, ::-1], mask[:, ::-1]
    return pixels, mask, int(rng.integers(0, size - ow + 1)), int(rng.integers(0, size - oh + 1))


def compose(
    rng: np.random.Generator,
    background: Background,
    cutouts: Sequence[Cutout],
    config: CompositeConfig,
    colour_cutouts: Sequence[Cutout] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """One composite: ``(size, size, 3) uint8`` pixels and the ``(size, size) bool`` mask of the pasted objects.

    Objects come from ``cutouts`` (and from ``colour_cutouts`` a ``1 - grey_share`` of the time when given).
    A background's own salient thing is a distractor (False in the mask) when kept; with ``photo_alone`` a
    background with a known thing is returned alone, its thing the target.
    """
    size = config.size
    if background.thing is not None and rng.random() < config.photo_alone:
        crop, thing = crop_background(rng, background, size, True, max(config.min_crop, 0.8))
        out = np.clip(_jitter(rng, crop, config.jitter / 2), 0, 255)
        if rng.random() < 0.5:
            return np.ascontiguousarray(out[:, ::-1].astype(np.uint8)), np.ascontiguousarray(thing[:, ::-1])  # type: ignore[index]
        return out.astype(np.uint8), thing  # type: ignore[return-value]
    keep = rng.random() < config.keep_thing
    crop, _ = crop_background(rng, background, size, keep, config.min_crop)
    canvas = np.clip(_jitter(rng, crop, config.jitter / 2), 0, 255)
    n = 1 + int(rng.choice(config.max_objects, p=_fewer_likely(config.max_objects)))
    target = np.zeros((size, size), dtype=bool)
    owners = np.full((size, size), -1, dtype=np.int16)
    areas: list[int] = []
    for k in range(n):
        pool = cutouts if not colour_cutouts or rng.random() < config.grey_share else colour_cutouts
        cut = pool[int(rng.integers(len(pool)))]
        cover = float(np.exp(rng.uniform(np.log(config.min_cover), np.log(config.max_cover))))
        for _ in range(6):  # a placement that leaves every earlier object enough of itself
            obj, mask, x, y = _place(rng, cut, size, cover / (1 + 0.5 * k), bool(rng.random() < 0.5))
            oh, ow = mask.shape
            hidden = np.bincount(owners[y : y + oh, x : x + ow][mask].clip(-1) + 1, minlength=k + 1)[1:]
            if all(hidden[j] <= config.max_occlusion * areas[j] for j in range(k)):
                break
        colour = _jitter(rng, obj, config.jitter)
        if cut.grey and rng.random() < config.tint:
            gains = rng.uniform(0.55, 1.45, size=3).astype(np.float32)
            colour = colour * (gains / gains.mean())
        alpha = mask.astype(np.float32)
        if rng.random() < config.soften:
            sigma = float(rng.uniform(0.3, 1.0))
            alpha = cv2.GaussianBlur(alpha, (0, 0), sigma) * mask  # the edge fades inwards; outside stays 0
        region = canvas[y : y + oh, x : x + ow]
        region[:] = region * (1 - alpha[..., None]) + np.clip(colour, 0, 255) * alpha[..., None]
        target[y : y + oh, x : x + ow] |= mask
        owners[y : y + oh, x : x + ow][mask] = k
        areas.append(int(mask.sum()))
    out = canvas.astype(np.uint8)
    if rng.random() < config.greyscale:
        out = np.repeat(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)
    return out, target


def _fewer_likely(n: int) -> np.ndarray:
    """Probabilities of 1..n objects, halving with each extra object."""
    p = 0.5 ** np.arange(n)
    return p / p.sum()


class CompositeSet:
    """``length`` composites per epoch, drawn on the fly: a :class:`segmentation.training.MaskedImageSet`.

    Composite ``i`` of epoch ``e`` depends on ``(seed, e, i)`` only (``epoch`` stays 0 unless
    :meth:`set_epoch` is called: a validation set is fixed). Backgrounds are chosen uniformly from
    ``backgrounds``; objects from ``cutouts`` (grey, COIL-like) and ``colour_cutouts``.
    """

    def __init__(
        self,
        cutouts: Sequence[Cutout],
        backgrounds: Sequence[Background],
        length: int,
        config: CompositeConfig = CompositeConfig(),
        seed: int = 0,
        colour_cutouts: Sequence[Cutout] = (),
    ) -> None:
        if not cutouts or not backgrounds:
            raise ValueError("composites need at least one cut-out object and one background")
        self.cutouts, self.colour_cutouts = list(cutouts), list(colour_cutouts)
        self.backgrounds = list(backgrounds)
        self.length, self.config, self.seed = length, config, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        background = self.backgrounds[int(rng.integers(len(self.backgrounds)))]
        return compose(rng, background, self.cutouts, self.config, self.colour_cutouts)

    def labels(self) -> set[str]:
        """The objects this set pastes (``"coil:3"``, ``"photo:horse012"``)."""
        return {c.label for c in self.cutouts + self.colour_cutouts}
