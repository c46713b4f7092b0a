"""Shared fixtures: seeded synthetic images drawn with PIL, and a small, fast model configuration."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from retrieval.config import ModelConfig, RuntimeOptions

from .pg_server import PgServer, why_unavailable

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


@pytest.fixture(scope="session")
def pg_server():
    """A throw-away PostgreSQL server for the whole session (``tests/pg_server.py``), started on first use;
    skipped, saying why, where no server or driver can be had."""
    why = why_unavailable()
    if why is not None:
        pytest.skip(why)
    server = PgServer().start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server) -> str:
    """The URL of a fresh, empty database on the test server, dropped after the test."""
    url = pg_server.create_database()
    yield url
    pg_server.drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request) -> str | None:
    """Each test that takes it runs twice: on SQLite in the home folder (``None``, the default) and on a fresh
    PostgreSQL database (its URL)."""
    return None if request.param == "sqlite" else request.getfixturevalue("pg_url")


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


def cpu_bf16() -> tuple[bool, str]:
    """Whether this CPU runs bf16 convolutions in oneDNN's bf16 kernels (as the library decides:
    ``retrieval.efficientnet_lite.cpu_has_fast_bf16``), and a line saying what was found, for skip reasons.

    Without them (AVX2-only CPUs, or ``ONEDNN_MAX_CPU_ISA`` below AVX-512) PyTorch falls back to slow reference
    kernels. Native bf16 shows in /proc/cpuinfo as ``avx512_bf16`` (Cooper Lake, Zen 4) or ``amx_bf16``
    (Sapphire Rapids); the same tests then run there on those kernels.
    """
    from retrieval.efficientnet_lite import cpu_has_fast_bf16

    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    native = sorted(flags & {"avx512_bf16", "amx_bf16", "amx_tile"}) or ["none"]
    found = (
        f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"oneDNN bf16 kernels {'yes' if cpu_has_fast_bf16() else 'no'}, CPU bf16 flags: {', '.join(native)}"
    )
    return cpu_has_fast_bf16(), found


#: Marks a test of the bf16 autocast path: run where the CPU has oneDNN bf16 kernels, skipped (with what was
#: found) where bf16 would crawl through PyTorch's reference kernels.
needs_cpu_bf16 = pytest.mark.skipif(
    not cpu_bf16()[0], reason=f"no oneDNN bf16 kernels on this CPU, bf16 would be emulated slowly ({cpu_bf16()[1]})"
)


def cuda_found() -> tuple[bool, str]:
    """Whether torch sees a CUDA GPU, and a line saying what was found, for skip reasons."""
    if torch.cuda.is_available():
        return True, f"CUDA GPU: {torch.cuda.get_device_name(0)}"
    return False, f"torch {torch.__version__} sees no CUDA GPU (built for CUDA {torch.version.cuda or 'none'})"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "needs_cuda: needs a CUDA GPU (skipped without one); `python -m pytest -m needs_cuda` runs them all"
    )


def needs_cuda(test):
    """Marks a test of a GPU path: selectable with ``-m needs_cuda``, and skipped, saying what was found, where
    torch sees no CUDA GPU (the path's CPU twin is tested on every machine)."""
    found, what = cuda_found()
    return pytest.mark.needs_cuda(pytest.mark.skipif(not found, reason=f"needs a CUDA GPU: {what}")(test))
