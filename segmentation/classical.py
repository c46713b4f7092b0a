"""Weight-free segmenters: GrabCut from a prior, Lab colour clustering, border-contrast saliency.

All of them work on a downscaled copy of the image (longest side ``max_side``) and upscale the mask back, so the
cost does not grow with the photo's resolution. They rest on one assumption: the object is roughly central and
the image border is mostly background. Each is a pure function ``f(pixels, config) -> mask`` with a frozen
config dataclass, wrapped by :class:`ClassicalSegmenter` and registered under its own name:

* ``grabcut`` — GrabCut (``cv2.grabCut``) initialised from the border-colour/centre prior below (the default:
  the best mean IoU on the 246 Weizmann training photos, ``python -m benchmarks.bench_seg_weizmann --split train``:
  grabcut 0.710, grabcut_rect 0.684, border_saliency 0.572, lab_kmeans 0.516, centred ellipse 0.396; grabcut is
  also faster than grabcut_rect, 3 GrabCut iterations against 5);
* ``grabcut_rect`` — GrabCut initialised from a centred rectangle (outside = definite background);
* ``lab_kmeans`` — k-means in Lab + position; clusters that crowd the border are background; CRF-like smoothing;
* ``border_saliency`` — the prior alone (distance to the border's colours x centre weight), Otsu threshold.

The prior: the image border's colours are clustered (k-means in Lab); a pixel's *background distance* is its Lab
distance to the nearest border colour, divided by the border pixels' own typical distance, and weighted by a
Gaussian centre prior. Options can be given in the spec: ``grabcut:max_side=160,iterations=3``.

Every function returns a mask for every input: images too small or too uniform to segment get an all-True mask
(the whole image), which :func:`segmentation.base.check_mask` flags as "full" so the engine uses the whole image.
Randomness (k-means seeding, GrabCut's GMM initialisation) is seeded with ``cv2.setRNGSeed(config.seed)``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import cv2
import numpy as np

from .base import SEGMENTERS

log = logging.getLogger(__name__)

# Images whose shorter side (after downscaling) is below this, or whose colours barely vary, are not segmented.
MIN_SIDE = 8
MIN_STD = 1.0
# GrabCut fits a 5-component colour GMM to each class by k-means: each class needs a few samples per component.
MIN_GMM_SAMPLES = 25


# ----------------------------------------------------------------------------------------------------------------
# configurations
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PriorConfig:
    """The border-colour + centre prior shared by ``grabcut`` and ``border_saliency``.

    ``border``: width of the border strip as a share of the shorter side; ``border_colours``: k of the k-means
    over the strip's Lab colours; ``centre_sigma``: the centre Gaussian's standard deviation as a share of each
    side (0 turns the centre weight off).
    """

    border: float = 0.05
    border_colours: int = 6
    centre_sigma: float = 0.35


@dataclass(frozen=True)
class GrabCutConfig:
    """GrabCut on a ``max_side`` copy, ``iterations`` rounds.

    ``init="prior"``: pixels whose prior score is above ``threshold_scale`` x its Otsu threshold start as
    probable foreground, the rest as probable background, and the border strip (``prior.border``) as definite
    background when ``border_is_background`` (else probable: for objects that run off the frame). The defaults
    were chosen on 60 photos of the Weizmann training split (mean IoU 0.69 vs 0.63 with the plain Otsu
    threshold and a probable-background border; 3 iterations score as 5 and 8, ~30% faster). ``init="rect"``: the centred rectangle leaving ``margin`` of each side is probable
    foreground, the outside definite background (the classic GrabCut initialisation).
    """

    max_side: int = 200
    iterations: int = 3
    init: str = "prior"
    margin: float = 0.05
    border_is_background: bool = True
    threshold_scale: float = 0.5
    keep_largest: bool = True
    seed: int = 0
    prior: PriorConfig = PriorConfig()


@dataclass(frozen=True)
class LabKMeansConfig:
    """k-means over Lab colour + ``position_weight`` x position (pixels, both scaled to the image).

    A cluster whose share of border pixels, relative to its size, is at least ``border_affinity`` times the
    border's share of the image is background. The foreground indicator is then smoothed by ``smooth_iters``
    rounds of a mean-field-like update (the unary pull ``unary_weight``, the neighbourhood average ``pairwise_weight``
    over a ``smooth_radius`` box).
    """

    max_side: int = 128
    clusters: int = 8
    position_weight: float = 20.0
    border: float = 0.05
    border_affinity: float = 0.3
    smooth_iters: int = 5
    smooth_radius: int = 2
    unary_weight: float = 2.0
    pairwise_weight: float = 4.0
    keep_largest: bool = True
    seed: int = 0


@dataclass(frozen=True)
class SaliencyConfig:
    """The prior alone, on a ``max_side`` copy, thresholded by Otsu, then cleaned up."""

    max_side: int = 160
    keep_largest: bool = True
    seed: int = 0
    prior: PriorConfig = PriorConfig()


# ----------------------------------------------------------------------------------------------------------------
# shared helpers
# ----------------------------------------------------------------------------------------------------------------


def as_rgb_uint8(pixels: np.ndarray) -> np.ndarray:
    """Coerce an image to ``(H, W, 3) uint8``: grey ``(H, W)`` or ``(H, W, 1)`` is repeated, RGBA loses alpha,
    bool / float (``[0, 1]`` if its maximum is at most 1, else ``[0, 255]``) / other integers are scaled or clipped.
    Raises ``ValueError`` for anything that is not an image of 1, 3 or 4 channels."""
    arr = np.asarray(pixels)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an (H, W, 3) image, got shape {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == bool:
        return np.ascontiguousarray(arr.astype(np.uint8) * 255)
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.nan_to_num(arr.astype(np.float64))
        if arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        return np.ascontiguousarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
    return np.ascontiguousarray(np.clip(arr, 0, 255).astype(np.uint8))


def downscale(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """``(H, W, 3) -> (h, w, 3)`` with ``max(h, w) <= max_side`` (area interpolation), unchanged if already small."""
    h, w = rgb.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return rgb
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def upscale_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``(h, w) bool -> (H, W) bool`` by bilinear interpolation of the 0/255 mask, thresholded at half."""
    if mask.shape == tuple(shape):
        return mask.astype(bool)
    big = cv2.resize(mask.astype(np.uint8) * 255, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return big > 127


def too_plain(small: np.ndarray) -> bool:
    """True when an image is too small or too uniform to segment."""
    return min(small.shape[:2]) < MIN_SIDE or float(small.reshape(-1, 3).std(axis=0).max()) < MIN_STD


def whole_image(shape: tuple[int, int]) -> np.ndarray:
    """The all-True ``(H, W)`` mask returned for images that cannot be segmented."""
    log.debug("image of %s too small or too uniform to segment: whole image", shape)
    return np.ones(shape, dtype=bool)


def border_strip(shape: tuple[int, int], share: float) -> np.ndarray:
    """``(h, w) bool``: True on a frame ``max(1, share x shorter side)`` pixels wide."""
    h, w = shape
    width = max(1, round(share * min(h, w)))
    strip = np.ones((h, w), dtype=bool)
    strip[width : h - width, width : w - width] = False
    return strip


def centre_weight(shape: tuple[int, int], sigma: float) -> np.ndarray:
    """``(h, w) float32`` Gaussian centred on the image, std ``sigma`` x each side, 1 at the centre."""
    h, w = shape
    if sigma <= 0:
        return np.ones((h, w), dtype=np.float32)
    y = (np.arange(h, dtype=np.float32) + 0.5) / h - 0.5
    x = (np.arange(w, dtype=np.float32) + 0.5) / w - 0.5
    return np.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma**2)).astype(np.float32)


def kmeans(samples: np.ndarray, k: int, seed: int, attempts: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Seeded k-means: ``(N, D) float32 -> (labels (N,) int, centres (k', D))``, with ``k' = min(k, N)``."""
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    k = max(1, min(k, len(samples)))
    cv2.setRNGSeed(seed)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 0.5)
    _, labels, centres = cv2.kmeans(samples, k, None, criteria, attempts, cv2.KMEANS_PP_CENTERS)
    return labels.ravel(), centres


def to_lab(rgb: np.ndarray) -> np.ndarray:
    """``(h, w, 3) uint8 RGB -> (h, w, 3) float32`` CIE Lab (L in [0, 100], a/b roughly in [-128, 127])."""
    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)


def prior_score(rgb: np.ndarray, config: PriorConfig, seed: int = 0) -> np.ndarray:
    """Foreground score ``(h, w, 3) uint8 -> (h, w) float32 >= 0``: the Lab distance to the nearest of the
    border's ``border_colours`` k-means colours, in units of the border pixels' own median distance, times the
    centre weight. Background-like pixels score near 0."""
    lab = to_lab(rgb)
    h, w = lab.shape[:2]
    strip = border_strip((h, w), config.border)
    _, centres = kmeans(lab[strip], config.border_colours, seed)
    flat = lab.reshape(-1, 3)
    dist = np.full(len(flat), np.inf, dtype=np.float32)
    for c in centres:
        dist = np.minimum(dist, np.linalg.norm(flat - c, axis=1))
    dist = dist.reshape(h, w)
    scale = max(float(np.median(dist[strip])), 2.0)  # at least ~ a just-noticeable Lab difference
    return (dist / scale) * centre_weight((h, w), config.centre_sigma)


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of a float array (over 256 bins between its minimum and maximum)."""
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return hi
    scaled = np.round((values - lo) / (hi - lo) * 255).astype(np.uint8)
    t, _ = cv2.threshold(scaled.reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return lo + (t + 0.5) / 255.0 * (hi - lo)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``(h, w) bool``: background regions not connected to the image border become foreground."""
    h, w = mask.shape
    padded = np.zeros((h + 2, w + 2), dtype=np.uint8)
    padded[1:-1, 1:-1] = mask
    flood = padded.copy()
    cv2.floodFill(flood, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 1)
    return (padded[1:-1, 1:-1] > 0) | (flood[1:-1, 1:-1] == 0)


def clean_mask(mask: np.ndarray, keep_largest: bool = True, keep_share: float = 0.2) -> np.ndarray:
    """Remove specks (3x3 opening), fill holes, and when ``keep_largest`` keep only the connected components at
    least ``keep_share`` of the largest one's area. ``(h, w) bool -> (h, w) bool``."""
    m = mask.astype(np.uint8)
    if min(m.shape) >= 5:
        kernel = np.ones((3, 3), np.uint8)
        opened = cv2.morphologyEx(m, cv2.MORPH_OPEN, kernel)
        if opened.any():
            m = opened
    if keep_largest and m.any():
        n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        if n > 2:
            areas = stats[1:, cv2.CC_STAT_AREA]
            keep = np.flatnonzero(areas >= keep_share * areas.max()) + 1
            m = np.isin(labels, keep).astype(np.uint8)
    return fill_holes(m > 0)


# ----------------------------------------------------------------------------------------------------------------
# the segmenters (pure functions)
# ----------------------------------------------------------------------------------------------------------------


def _run_grabcut(small: np.ndarray, config: GrabCutConfig) -> np.ndarray:
    """GrabCut on a small ``(h, w, 3) uint8`` image; returns ``(h, w) bool``."""
    h, w = small.shape[:2]
    bgd_model = np.zeros((1, 65), np.float64)
    fgd_model = np.zeros((1, 65), np.float64)
    iterations = max(1, config.iterations)
    cv2.setRNGSeed(config.seed)
    if config.init == "rect":
        mx, my = max(1, round(config.margin * w)), max(1, round(config.margin * h))
        labels = np.zeros((h, w), np.uint8)
        rect = (mx, my, max(1, w - 2 * mx), max(1, h - 2 * my))
        cv2.grabCut(small, labels, rect, bgd_model, fgd_model, iterations, cv2.GC_INIT_WITH_RECT)
    elif config.init == "prior":
        score = prior_score(small, config.prior, config.seed)
        fg = score > otsu_threshold(score) * config.threshold_scale
        labels = np.where(fg, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
        strip = border_strip((h, w), config.prior.border)
        labels[strip] = cv2.GC_BGD if config.border_is_background else cv2.GC_PR_BGD
        n_fg = int(np.count_nonzero(labels == cv2.GC_PR_FGD))
        if min(n_fg, labels.size - n_fg) < MIN_GMM_SAMPLES:  # too few to fit GrabCut's colour models
            return fg
        cv2.grabCut(small, labels, None, bgd_model, fgd_model, iterations, cv2.GC_INIT_WITH_MASK)
    else:
        raise ValueError(f"unknown GrabCut init {config.init!r}; known: prior, rect")
    return (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)


def segment_at_working_size(
    pixels: np.ndarray, max_side: int, keep_largest: int, segment: Callable[[np.ndarray], np.ndarray | None]
) -> np.ndarray:
    """Run ``segment`` on a copy whose longest side is ``max_side``, clean its mask and scale it back:
    ``(H, W, 3) -> (H, W) bool``. A plain image, or ``segment`` returning ``None``, gives the whole image."""
    rgb = as_rgb_uint8(pixels)
    shape = rgb.shape[:2]
    small = downscale(rgb, max_side)
    mask = None if too_plain(small) else segment(small)
    if mask is None:
        return whole_image(shape)
    return upscale_mask(clean_mask(mask, keep_largest), shape)


def grabcut_mask(pixels: np.ndarray, config: GrabCutConfig = GrabCutConfig()) -> np.ndarray:
    """GrabCut foreground. ``(H, W, 3) uint8 RGB -> (H, W) bool``."""
    return segment_at_working_size(
        pixels, config.max_side, config.keep_largest, lambda small: _run_grabcut(small, config)
    )


def _mean_field_smooth(unary: np.ndarray, config: LabKMeansConfig) -> np.ndarray:
    """CRF-like smoothing of a foreground probability ``(h, w) float32 in [0, 1]``: each round
    ``q = sigmoid(unary_weight * (2u - 1) + pairwise_weight * (2 * boxmean(q) - 1))``."""
    q = unary.astype(np.float32)
    k = 2 * max(0, config.smooth_radius) + 1
    for _ in range(max(0, config.smooth_iters)):
        neighbours = cv2.blur(q, (k, k), borderType=cv2.BORDER_REPLICATE)
        logits = config.unary_weight * (2 * unary - 1) + config.pairwise_weight * (2 * neighbours - 1)
        q = 1.0 / (1.0 + np.exp(-logits))
    return q


def lab_kmeans_mask(pixels: np.ndarray, config: LabKMeansConfig = LabKMeansConfig()) -> np.ndarray:
    """Colour clustering with a border background model. ``(H, W, 3) uint8 RGB -> (H, W) bool``."""
    return segment_at_working_size(
        pixels, config.max_side, config.keep_largest, lambda small: _lab_kmeans_small(small, config)
    )


def _lab_kmeans_small(small: np.ndarray, config: LabKMeansConfig) -> np.ndarray | None:
    h, w = small.shape[:2]
    lab = to_lab(small).reshape(-1, 3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    pos = np.stack([yy.ravel() / max(h, w), xx.ravel() / max(h, w)], axis=1) * config.position_weight
    labels, _ = kmeans(np.concatenate([lab, pos], axis=1), config.clusters, config.seed)
    strip = border_strip((h, w), config.border).ravel()
    counts = np.bincount(labels, minlength=labels.max() + 1).astype(np.float64)
    on_border = np.bincount(labels[strip], minlength=len(counts)).astype(np.float64)
    affinity = (on_border / np.maximum(counts, 1)) / max(strip.mean(), 1e-6)
    unary = (affinity < config.border_affinity)[labels].reshape(h, w).astype(np.float32)
    if not unary.any():  # every colour touches the border
        return None
    return _mean_field_smooth(unary, config) > 0.5


def saliency_mask(pixels: np.ndarray, config: SaliencyConfig = SaliencyConfig()) -> np.ndarray:
    """The border-colour/centre prior thresholded by Otsu. ``(H, W, 3) uint8 RGB -> (H, W) bool``."""

    def segment(small: np.ndarray) -> np.ndarray:
        score = cv2.GaussianBlur(prior_score(small, config.prior, config.seed), (0, 0), 1.0)
        return score > otsu_threshold(score)

    return segment_at_working_size(pixels, config.max_side, config.keep_largest, segment)


# ----------------------------------------------------------------------------------------------------------------
# segmenter objects, spec options, registration
# ----------------------------------------------------------------------------------------------------------------

C = TypeVar("C")


@dataclass(frozen=True)
class ClassicalSegmenter(Generic[C]):
    """A pure mask function bound to its configuration. ``(H, W, 3) uint8 -> (H, W) bool``; never raises for
    a well-formed image, whatever its size or content."""

    spec: str
    config: C
    function: Callable[[np.ndarray, C], np.ndarray]

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self.function(pixels, self.config)


def _convert(text: str, current: Any, key: str) -> Any:
    if isinstance(current, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"option {key}: expected true/false, got {text!r}")
    try:
        return type(current)(text)
    except ValueError:
        raise ValueError(f"option {key}: expected {type(current).__name__}, got {text!r}") from None


def parse_options(config: C, arg: str | None) -> C:
    """Apply ``"key=value,key=value"`` to a frozen config dataclass; the prior's fields are reachable as
    ``prior.border=0.1`` or bare (``border=0.1``) when the config has no field of that name. Unknown keys raise
    ``ValueError`` naming the known ones."""
    if not arg:
        return config
    changes: dict[str, Any] = {}
    prior_changes: dict[str, Any] = {}
    own = {f.name for f in dataclasses.fields(config)}  # type: ignore[arg-type]
    prior = getattr(config, "prior", None)
    prior_fields = {f.name for f in dataclasses.fields(prior)} if prior is not None else set()
    for item in filter(None, (s.strip() for s in arg.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep:
            raise ValueError(f"option {item!r} is not key=value")
        if key.startswith("prior."):
            key = key[len("prior.") :]
            target = prior_changes if key in prior_fields else None
        elif key in own and key != "prior":
            target = changes
        elif key in prior_fields:
            target = prior_changes
        else:
            target = None
        if target is None:
            known = sorted((own - {"prior"}) | prior_fields)
            raise ValueError(f"unknown option {key!r}; known: {', '.join(known)}")
        source = prior if target is prior_changes else config
        target[key] = _convert(value.strip(), getattr(source, key), key)
    if prior_changes:
        changes["prior"] = dataclasses.replace(prior, **prior_changes)
    return dataclasses.replace(config, **changes)  # type: ignore[type-var]


def _register(name: str, default: Any, function: Callable[[np.ndarray, Any], np.ndarray]) -> None:
    def factory(arg: str | None) -> ClassicalSegmenter:
        spec = name if arg is None else f"{name}:{arg}"
        return ClassicalSegmenter(spec, parse_options(default, arg), function)

    factory.__doc__ = f"Build ``{name}``; ``arg`` is ``key=value,...`` over {type(default).__name__}."
    SEGMENTERS.register(name)(factory)


_register("grabcut", GrabCutConfig(), grabcut_mask)
_register("grabcut_rect", GrabCutConfig(init="rect", iterations=5), grabcut_mask)
_register("lab_kmeans", LabKMeansConfig(), lab_kmeans_mask)
_register("border_saliency", SaliencyConfig(), saliency_mask)
