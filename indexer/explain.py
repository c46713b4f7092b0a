"""Why a hit matched: where in the hit the query's content is, as a picture a person can look at.

Windows of the hit (a third, a half and two thirds of its sides, overlapping by half) are embedded with the
collection's network, as regions are in R-MAC, and each is scored against the query's vector: the best window is
the part of the hit that matches the query, and each pixel's heat is the best score of the windows covering it.
It asks nothing of the model but its vectors, so it explains any backbone and pooling; it costs one batch of
about 40 small embeddings per hit. Each picture shows the query (the searched region, when the search was by a
box) beside the hit under its heat map, the best window boxed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from PIL import Image, ImageDraw

from retrieval.resize import resize_longest

from .imageio import DEFAULT_MAX_PIXELS, Box, ImageLoadError, load_image
from .masking import Masker

if TYPE_CHECKING:
    from retrieval.model import Embedder

    from .pipeline import Source

log = logging.getLogger(__name__)


class Hit(Protocol):
    """What a search hit needs for its explanation (``indexer.engine.SearchHit`` is one)."""

    path: str
    score: float


#: Height of each half of an explanation picture, in pixels.
PANEL_HEIGHT = 320
#: The hit is cut into windows at this longest side (each window is then embedded at the model's size).
EXPLAIN_SIDE = 512


@dataclass
class Explanation:
    """One hit explained: ``box`` ``(x, y, w, h)`` in pixels of the hit's file as shown (``None``: the hit could
    not be read); ``picture``: the file written; ``heat`` ``(h, w)`` the similarity map over the hit, in [0, 1]."""

    hit_path: str
    picture: Path | None
    box: tuple[int, int, int, int] | None
    heat: np.ndarray | None = None
    error: str | None = None


#: Window sides, as a share of the hit's sides; windows overlap by half.
WINDOW_SHARES = (1 / 3, 1 / 2, 2 / 3)


def windows(width: int, height: int, shares: Sequence[float] = WINDOW_SHARES) -> list[tuple[int, int, int, int]]:
    """``(x, y, w, h)`` windows over a ``width`` x ``height`` picture: for each share, windows of that share of
    both sides at steps of half a window, the last one flush with the far edge."""
    out = []
    for share in shares:
        w, h = max(1, round(width * share)), max(1, round(height * share))
        xs = sorted({*range(0, width - w + 1, max(1, w // 2)), width - w})
        ys = sorted({*range(0, height - h + 1, max(1, h // 2)), height - h})
        out.extend((x, y, w, h) for y in ys for x in xs)
    return out


def heat_map(shape: tuple[int, int], boxes: Sequence[tuple[int, int, int, int]], scores: np.ndarray) -> np.ndarray:
    """``(h, w)`` map: each pixel's best score among the ``boxes`` covering it, scaled to [0, 1] between the
    lowest and the highest score."""
    heat = np.full(shape, -np.inf, dtype=np.float32)
    for (x, y, w, h), s in zip(boxes, scores):
        region = heat[y : y + h, x : x + w]
        np.maximum(region, s, out=region)
    lo, hi = float(np.min(scores)), float(np.max(scores))
    heat[~np.isfinite(heat)] = lo
    return (heat - lo) / (hi - lo) if hi > lo else np.zeros(shape, np.float32)


def _heat_overlay(pixels: np.ndarray, heat: np.ndarray) -> Image.Image:
    """The picture with the map laid over it: warm where the query matches, the rest dimmed."""
    h, w = pixels.shape[:2]
    up = np.asarray(Image.fromarray((heat * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BILINEAR)) / 255.0
    warm = np.stack([np.ones_like(up), up * 0.8, np.zeros_like(up)], axis=-1) * 255
    alpha = (0.55 * up)[..., None]
    base = pixels.astype(np.float32) * (0.45 + 0.55 * up[..., None])
    return Image.fromarray(np.clip(base * (1 - alpha) + warm * alpha, 0, 255).astype(np.uint8))


def _panel(img: Image.Image) -> tuple[Image.Image, float]:
    f = PANEL_HEIGHT / img.height
    return img.resize((max(1, round(img.width * f)), PANEL_HEIGHT), Image.Resampling.BILINEAR), f


def _file_name(rank: int, path: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem)[:60] or "image"
    return f"{rank:02d}-{stem}.png"


def _window_scores(embedder: Embedder, pixels: np.ndarray, boxes: list, query: np.ndarray) -> np.ndarray:
    """Each window of ``pixels`` ``(H, W, 3)`` embedded (windows of one size in one batch) and scored against
    ``query`` ``(D,)``."""
    size = embedder.config.image_size
    scores = np.zeros(len(boxes), np.float32)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for n, (_, _, w, h) in enumerate(boxes):
        by_shape.setdefault((w, h), []).append(n)
    for members in by_shape.values():
        crops = [resize_longest(pixels[y : y + h, x : x + w], size) for x, y, w, h in (boxes[n] for n in members)]
        scores[members] = embedder.embed_batch(np.stack(crops)) @ query
    return scores


def explain_hits(
    embedder: Embedder,
    query: Source,
    hits: Sequence[Hit],
    out_dir: str | Path,
    *,
    box: Box | None = None,
    masker: Masker | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> list[Explanation]:
    """Write one picture per hit into ``out_dir`` (``01-name.png``, ...: the query beside the hit, the hit
    under its heat map with the best-matching window boxed) and return what was found. ``query`` is a path or
    encoded bytes, embedded as the search embedded it (``box``: that region only; ``masker``: masked as the
    collection masks). A hit that cannot be read is reported, not raised.

    Raises :class:`ImageLoadError` when the query itself cannot be read."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    size = embedder.config.image_size
    q_img = load_image(query, size, max_pixels, box)
    q_pixels, q_mask = q_img.pixels[None], None
    if masker is not None:
        q_pixels, q_mask = masker.network_inputs(q_pixels, [masker(q_img.pixels).mask])
    q_vec = embedder.embed_batch(q_pixels, q_mask)[0]
    q_panel, _ = _panel(Image.fromarray(q_img.pixels))
    done: list[Explanation] = []
    for rank, hit in enumerate(hits, 1):
        try:
            h_img = load_image(hit.path, EXPLAIN_SIDE, max_pixels)
        except ImageLoadError as exc:
            log.warning("cannot explain %s: %s", hit.path, exc.reason)
            done.append(Explanation(hit.path, None, None, error=exc.reason))
            continue
        pixels = h_img.pixels
        boxes = windows(pixels.shape[1], pixels.shape[0])
        scores = _window_scores(embedder, pixels, boxes, q_vec)
        heat = heat_map(pixels.shape[:2], boxes, scores)
        bx, by, bw, bh = boxes[int(np.argmax(scores))]
        sx, sy = h_img.width / pixels.shape[1], h_img.height / pixels.shape[0]  # -> pixels of the file as shown
        file_box = (round(bx * sx), round(by * sy), round(bw * sx), round(bh * sy))
        overlay, f = _panel(_heat_overlay(pixels, heat))
        draw = ImageDraw.Draw(overlay)
        draw.rectangle([bx * f, by * f, (bx + bw) * f - 1, (by + bh) * f - 1], outline=(0, 200, 255), width=3)
        canvas = Image.new("RGB", (q_panel.width + 12 + overlay.width, PANEL_HEIGHT + 28), (250, 250, 250))
        canvas.paste(q_panel, (0, 28))
        canvas.paste(overlay, (q_panel.width + 12, 28))
        text = ImageDraw.Draw(canvas)
        text.text((4, 6), "query" + (" (region)" if box is not None else ""), fill=(30, 30, 30))
        text.text((q_panel.width + 16, 6), f"#{rank}  score {hit.score:.3f}  {Path(hit.path).name}", fill=(30, 30, 30))
        picture = out / _file_name(rank, hit.path)
        canvas.save(picture)
        done.append(Explanation(hit.path, picture, file_box, heat))
    return done
