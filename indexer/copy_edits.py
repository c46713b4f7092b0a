"""Edited copies of a picture, as people make them: crops, resizes, small rotations, colour changes, JPEG
re-encoding, overlays (a caption, a logo), mirror flips, and combinations of them, at a chosen strength.

Duplicate finding calibrates its threshold on such copies of the user's own images
(:func:`indexer.duplicates.calibrate`), and the duplicates benchmark builds its near-duplicate set with them.
Everything is seeded: the same ``rng`` state gives the same copy.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

__all__ = ["EDITS", "EditedCopy", "edited_copy", "apply_edit"]

#: Strengths: 0 light (what a messaging app does), 1 medium, 2 strong (what a person does on purpose).
STRENGTHS = (0, 1, 2)


def _crop(img: Image.Image, rng: np.random.Generator, s: int) -> Image.Image:
    keep = rng.uniform(*[(0.9, 0.97), (0.8, 0.9), (0.7, 0.8)][s])  # share of each side kept
    w, h = img.size
    cw, ch = max(8, int(w * keep)), max(8, int(h * keep))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((x0, y0, x0 + cw, y0 + ch))


def _resize(img: Image.Image, rng: np.random.Generator, s: int) -> Image.Image:
    f = rng.uniform(*[(0.6, 0.9), (0.4, 0.6), (0.25, 0.4)][s])
    if rng.random() < 0.25:
        f = 1.0 / f * 0.6  # sometimes an upscale
    w, h = img.size
    return img.resize((max(16, int(w * f)), max(16, int(h * f))), Image.Resampling.BICUBIC)


def _rotate(img: Image.Image, rng: np.random.Generator, s: int) -> Image.Image:
    angle = rng.uniform(*[(1, 3), (3, 7), (7, 12)][s]) * rng.choice([-1, 1])
    return img.rotate(float(angle), resample=Image.Resampling.BICUBIC, expand=False, fillcolor=(0, 0, 0))


def _colour(img: Image.Image, rng: np.random.Generator, s: int) -> Image.Image:
    span = [0.1, 0.2, 0.35][s]
    out = ImageEnhance.Brightness(img).enhance(1 + rng.uniform(-span, span))
    out = ImageEnhance.Contrast(out).enhance(1 + rng.uniform(-span, span))
    out = ImageEnhance.Color(out).enhance(1 + rng.uniform(-span, span) * 1.5)
    if s == 2 and rng.random() < 0.3:
        out = ImageOps.grayscale(out).convert("RGB")
    return out


def _jpeg(img: Image.Image, rng: np.random.Generator, s: int) -> Image.Image:
    quality = int(rng.integers(*[(70, 90), (45, 70), (25, 45)][s]))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _overlay(img: Image.Image, rng: np.random.Generator, s: int) -> Image.Image:
    out = img.copy()
    d = ImageDraw.Draw(out)
    w, h = out.size
    share = [0.04, 0.08, 0.14][s]  # of the area covered
    bw = max(4, int(w * rng.uniform(0.4, 0.9)))
    bh = max(3, int(share * w * h / bw))
    x0, y0 = int(rng.integers(0, max(1, w - bw))), int(rng.integers(0, max(1, h - bh)))
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    d.rectangle([x0, y0, x0 + bw, y0 + bh], fill=colour)
    d.text((x0 + 2, y0 + 1), "lookalike " + str(int(rng.integers(1000, 9999))), fill=(255 - colour[0], 255, 255))
    return out


def _flip(img: Image.Image, rng: np.random.Generator, s: int) -> Image.Image:
    return ImageOps.mirror(img)


Edit = Callable[[Image.Image, np.random.Generator, int], Image.Image]

#: Every single edit, by name.
EDITS: dict[str, Edit] = {
    "crop": _crop,
    "resize": _resize,
    "rotate": _rotate,
    "colour": _colour,
    "jpeg": _jpeg,
    "overlay": _overlay,
    "flip": _flip,
}


@dataclass(frozen=True)
class EditedCopy:
    image: Image.Image
    #: the edits applied, in order
    edits: tuple[str, ...]
    strength: int


def apply_edit(img: Image.Image, name: str, rng: np.random.Generator, strength: int = 1) -> Image.Image:
    """One named edit of :data:`EDITS` at ``strength`` (0, 1 or 2)."""
    return EDITS[name](img.convert("RGB"), rng, strength)


def edited_copy(
    img: Image.Image, rng: np.random.Generator, strength: int = 1, n_edits: int | None = None
) -> EditedCopy:
    """An edited copy of ``img``: ``n_edits`` different edits (default: 1 to 3, more when stronger) in a random
    order, re-encoded as JPEG last about half of the time (as a shared or exported photo is)."""
    if strength not in STRENGTHS:
        raise ValueError(f"strength must be 0, 1 or 2, got {strength!r}")
    names = list(EDITS)
    if n_edits is None:
        n_edits = int(rng.integers(1, 2 + strength))
    chosen = [names[i] for i in rng.choice(len(names), size=min(n_edits, len(names)), replace=False)]
    out = img.convert("RGB")
    for name in chosen:
        out = EDITS[name](out, rng, strength)
    if "jpeg" not in chosen and rng.random() < 0.5:
        out = _jpeg(out, rng, 0)
        chosen.append("jpeg")
    return EditedCopy(out, tuple(chosen), strength)
