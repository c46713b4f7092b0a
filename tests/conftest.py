"""Shared fixtures: seeded synthetic images drawn with PIL, and a small, fast model configuration."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from retrieval.config import ModelConfig, RuntimeOptions

# The bundled ImageNet weights at a small image size: the real network, fast enough for every test.
SMALL_MODEL = ModelConfig(image_size=64)
FAST_RUNTIME = RuntimeOptions(device="cpu", batch_size=8, workers=0)


def draw_image(seed: int, size: tuple[int, int] = (96, 80)) -> Image.Image:
    """A seeded picture: a coloured background with a few random shapes."""
    rng = random.Random(seed)
    img = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    d = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = rng.randrange(size[0] - 10), rng.randrange(size[1] - 10)
        x1, y1 = x0 + rng.randrange(8, size[0] // 2), y0 + rng.randrange(8, size[1] // 2)
        colour = tuple(rng.randrange(256) for _ in range(3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)([x0, y0, x1, y1], fill=colour)
    return img


def make_folder(root: Path, n: int, start_seed: int = 0, ext: str = "png") -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = root / f"img_{start_seed + i:04d}.{ext}"
        draw_image(start_seed + i).save(p)
        paths.append(p)
    return paths


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    make_folder(folder, 12)
    make_folder(folder / "sub", 4, start_seed=100, ext="jpg")
    return folder


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def one_thread():
    """Tiny tensors: intra-op threads only add overhead, and stall badly on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
