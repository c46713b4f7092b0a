"""The GPU paths measured in one run (issue 17): embedding, search, training, and the CUDA tests' result.

Sections (each writes the JSON as soon as it ends, so a run cut short keeps what it measured):

1. ``pipeline``: real photos (default: ``--images`` JPEGs of ../shared/data/lfw/lfw-deepfunneled, copied to a
   temporary folder, each under ``--repeat`` names) on ``--device`` (auto: the GPU when torch sees one). ``bare``: the photos decoded and
   batched by shape beforehand, only ``Embedder.embed_batch`` timed; ``pipeline``: ``Collection.index_folder``
   into a fresh collection (scan, hash, decoding threads, network, SQLite, FAISS), as ``lookalike index``
   runs it. Rounds interleaved; the figure of merit is the median ratio pipeline / bare (goal >= 0.8) and the
   pipeline's images/s (goal >= 1,000 for the default model on a GPU). Batch size and decoding threads are the
   device's defaults (``retrieval.config.device_plan``) unless given.
2. ``precision``: bare images/s and cosine to the fp32 vectors of the same photos for fp32 / bf16 / fp16
   autocast (fp16 and bf16 on a GPU only).
3. ``search``: synthetic unit vectors (``--dim``, seeded), ``--sizes`` vectors (default 1M and 10M): FAISS's
   exact flat search on the CPU against torch's exact search on the GPU (``TorchFlatIndex``, fp16 and fp32
   storage; and FAISS's GPU index when FAISS has GPU support): single-query latency p50 / p90, and a batch of
   ``--batch-queries`` queries; recall@10 of each against the CPU's exact results.
4. ``training``: images/s of one epoch of ``Trainer`` (triplet loss, default model at ``--train-size`` px,
   batch 32) and of ``SegTrainer`` (U-Net at 192 px, batch 8) on the same photos held in memory (pseudo
   labels: every 4 photos one class; pseudo masks: a centred ellipse).
5. ``cuda_tests``: ``python -m pytest -m needs_cuda -rs tests/test_gpu.py``: its summary line and exit status
   (and the end of its output when it failed).

On a GPU machine, from the repository root (one command; a few minutes):

    python -m benchmarks.bench_gpu [--folder DIR] [--out /path/gpu.json]

On a lent GPU machine whose image lacks some of the project's packages and cannot reach a registry,
``benchmarks/gpu_prepare.sh`` gathers wheels and photos here and prints the command to run there.

Here, on a CPU, ``--smoke`` runs every section at tiny sizes (a few photos, 2,000 / 20,000 vectors of
dimension 64) to show the script works; its figures are not GPU figures.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from benchmarks.common import ROOT, SHARED_DATA, BenchParser, machine, write_json
from benchmarks.timing import Stopwatch, interleaved, loadavg, rate, warm_up
from indexer.engine import Collection
from indexer.pipeline import decoded
from indexer.scan import scan_folder
from indexer.torch_search import TorchFlatIndex
from indexer.vector_index import IndexConfig, VectorIndex, faiss_gpu_available
from retrieval.config import ModelConfig, RuntimeOptions
from retrieval.model import Embedder, resolve_device
from retrieval.training import TrainConfig, Trainer
from segmentation.training import InMemoryPairs, SegTrainConfig, SegTrainer

DEFAULT_FOLDER = SHARED_DATA / "lfw" / "lfw-deepfunneled"


# --------------------------------------------------------------------------------------------- photos


def photo_files(folder: Path | None, count: int, smoke: bool, tmp: Path) -> tuple[Path, list[str], str]:
    """``count`` photos copied into a folder of their own: ``(folder, files, where they came from)``. With
    ``--smoke`` and no dataset, drawn pictures stand in (said so in the JSON)."""
    source = folder or DEFAULT_FOLDER
    out = tmp / "photos"
    out.mkdir()
    if source.is_dir():
        files = sorted(f.path for f in scan_folder(source).files)[:count]
        for i, f in enumerate(files):
            shutil.copy(f, out / f"{i:06d}{Path(f).suffix.lower()}")
        origin = str(source)
    elif smoke:
        for i in range(count):
            drawn(i, (250, 250)).save(out / f"{i:06d}.jpg", quality=90)
        origin = "drawn pictures (no dataset found; smoke run)"
    else:
        sys.exit(f"no photos at {source}: pass --folder DIR (or set LOOKALIKE_SHARED_DATA)")
    return out, sorted(str(p) for p in out.iterdir()), origin


def drawn(seed: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 256, 3)))
    d = ImageDraw.Draw(img)
    for _ in range(8):
        x0, y0 = (int(v) for v in rng.integers(0, size[0] - 20, 2))
        d.ellipse(
            [x0, y0, x0 + 20 + int(rng.integers(0, 80)), y0 + 20 + int(rng.integers(0, 80))],
            fill=tuple(int(v) for v in rng.integers(0, 256, 3)),
        )
    return img


def shape_batches(files: list[str], image_size: int, batch: int, workers: int) -> list[np.ndarray]:
    """The photos decoded as the pipeline decodes them, grouped by shape into batches of ``batch``."""
    by_shape: dict[tuple[int, ...], list[np.ndarray]] = {}
    for _, item in decoded(files, image_size, workers=workers):
        assert not isinstance(item, str), item
        by_shape.setdefault(item.image.pixels.shape, []).append(item.image.pixels)
    return [np.stack(g[i : i + batch]) for g in by_shape.values() for i in range(0, len(g), batch)]


def bare_forward(embedder: Embedder, batches: list[np.ndarray]) -> float:
    with Stopwatch() as clock:
        for b in batches:
            embedder.embed_batch(b)
    return rate(sum(len(b) for b in batches), clock.seconds)


def index_run(folder: Path, embedder: Embedder, runtime: RuntimeOptions, files: int) -> float:
    with tempfile.TemporaryDirectory() as home:
        coll = Collection(home, runtime=runtime, embedder_factory=lambda c, r: embedder)
        coll.configure(model=embedder.config)
        with Stopwatch() as clock:
            report = coll.index_folder(folder)
        assert report.embedded == files, report.skipped
    return rate(files, clock.seconds)


def pipeline_section(folder: Path, files: list[str], runtime: RuntimeOptions, rounds: int) -> dict[str, Any]:
    model = ModelConfig()
    embedder = Embedder(model, runtime)
    plan = embedder.plan
    batches = shape_batches(files, model.image_size, plan.batch_size, plan.workers)
    warm_up(lambda: bare_forward(embedder, batches[:3]), passes=2)
    speeds = interleaved(
        {
            "bare": lambda: bare_forward(embedder, batches),
            "pipeline": lambda: index_run(folder, embedder, runtime, len(files)),
        },
        rounds,
    )
    ratios = [p / b for p, b in zip(speeds["pipeline"], speeds["bare"])]
    return {
        "images": len(files),
        "shapes": len({b.shape[1:] for b in batches}),
        "model": model.describe(),
        "device": embedder.describe_device(),
        "batch_size": plan.batch_size,
        "workers": plan.workers,
        "bare_forward_images_per_s": round(float(np.median(speeds["bare"])), 1),
        "pipeline_images_per_s": round(float(np.median(speeds["pipeline"])), 1),
        "ratio_median": round(float(np.median(ratios)), 3),
        "rounds": {k: [round(x, 1) for x in v] for k, v in speeds.items()},
        "loadavg": loadavg(),
    }


def precision_section(files: list[str], runtime: RuntimeOptions, gpu: bool) -> dict[str, Any]:
    model = ModelConfig()
    out: dict[str, Any] = {}
    reference = None
    for precision in ("fp32", "bf16", "fp16"):
        if precision != "fp32" and not gpu:
            out[precision] = "skipped: measured on a GPU only (bf16 on this CPU is emulated; fp16 needs a GPU)"
            continue
        embedder = Embedder(model, dataclasses.replace(runtime, precision=precision))
        batches = shape_batches(files, model.image_size, embedder.plan.batch_size, embedder.plan.workers)
        warm_up(lambda: bare_forward(embedder, batches[:2]))  # noqa: B023 - used at once
        speed = bare_forward(embedder, batches)
        vectors = np.concatenate([embedder.embed_batch(b) for b in batches])
        if reference is None:
            reference = vectors
        cos = (vectors * reference).sum(axis=1)
        out[precision] = {
            "bare_forward_images_per_s": round(speed, 1),
            "cosine_to_fp32_min": round(float(cos.min()), 5),
            "cosine_to_fp32_mean": round(float(cos.mean()), 6),
        }
    return out


# --------------------------------------------------------------------------------------------- search


def unit_vectors(n: int, dim: int, device: torch.device, seed: int) -> np.ndarray:
    """``(n, dim)`` float32 unit vectors, drawn on ``device`` in blocks (fast on a GPU) and returned on the host."""
    gen = torch.Generator(device=device).manual_seed(seed)
    out = np.empty((n, dim), np.float32)
    block = 1 << 20
    for start in range(0, n, block):
        x = torch.randn(min(block, n - start), dim, device=device, generator=gen)
        out[start : start + x.shape[0]] = torch.nn.functional.normalize(x, dim=1).cpu().numpy()
    return out


def latency(search: Callable[[np.ndarray, int], Any], queries: np.ndarray, batch: np.ndarray) -> dict[str, float]:
    search(queries[:1], 10)  # warm-up (kernels, allocator)
    single = []
    for q in queries:
        with Stopwatch() as clock:
            search(q[None], 10)
        single.append(clock.seconds * 1000)
    with Stopwatch() as clock:
        search(batch, 10)
    return {
        "single_p50_ms": round(float(np.percentile(single, 50)), 3),
        "single_p90_ms": round(float(np.percentile(single, 90)), 3),
        f"batch_{len(batch)}_ms": round(clock.seconds * 1000, 2),
        "batch_queries_per_s": round(len(batch) / clock.seconds, 1),
    }


def recall_at_10(found: np.ndarray, truth: np.ndarray) -> float:
    return round(float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])), 4)


def search_section(n: int, dim: int, single: int, batch_queries: int, device: torch.device) -> dict[str, Any]:
    with Stopwatch() as made:
        vectors = unit_vectors(n, dim, device, seed=n)
        ids = np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(0)
    picks = rng.choice(n, size=max(single, batch_queries), replace=False)
    noisy = vectors[picks] + 0.05 * rng.standard_normal((len(picks), dim)).astype(np.float32)
    queries = (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)
    out: dict[str, Any] = {"vectors": n, "dim": dim, "make_seconds": round(made.seconds, 1)}
    with Stopwatch() as built:
        cpu = VectorIndex.build(ids, vectors, IndexConfig(kind="flat", device="cpu"))
    truth = cpu.search(queries[:batch_queries], 10)[1]
    out["cpu_faiss_flat"] = {
        "build_seconds": round(built.seconds, 1),
        **latency(cpu.search, queries[:single], queries[:batch_queries]),
    }
    del cpu
    for dtype in ("fp16", "fp32"):
        with Stopwatch() as built:
            index = TorchFlatIndex.build(ids, vectors, device=device, dtype=dtype)
        stats = latency(index.search, queries[:single], queries[:batch_queries])
        out[f"torch_{device.type}_{dtype}"] = {
            "build_seconds": round(built.seconds, 1),
            **stats,
            "recall_at_10": recall_at_10(index.search(queries[:batch_queries], 10)[1], truth),
            "memory_gb": round(index.nbytes / 1e9, 2),
        }
        del index
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if faiss_gpu_available():
        with Stopwatch() as built:
            index = VectorIndex.build(ids, vectors, IndexConfig(kind="flat", device="gpu"))
        stats = latency(index.search, queries[:single], queries[:batch_queries])
        out["faiss_gpu_flat"] = {
            "build_seconds": round(built.seconds, 1),
            "backend": index.search_backend,
            **stats,
            "recall_at_10": recall_at_10(index.search(queries[:batch_queries], 10)[1], truth),
        }
    else:
        out["faiss_gpu_flat"] = "skipped: the installed FAISS has no GPU support (see README, GPU)"
    return out


# --------------------------------------------------------------------------------------------- training


class Photos:
    """Photos in memory with pseudo labels (every ``per_class`` photos one class), for timing training."""

    def __init__(self, images: list[np.ndarray], per_class: int = 4) -> None:
        self.images = images
        self.labels = np.arange(len(images)) // per_class

    def __len__(self) -> int:
        return len(self.images)

    def load(self, i: int) -> np.ndarray:
        return self.images[i]


def ellipse_mask(shape: tuple[int, ...]) -> np.ndarray:
    h, w = shape[:2]
    yy, xx = np.mgrid[:h, :w]
    return ((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 3)) ** 2 <= 1


def training_section(photos: list[np.ndarray], device: str, size: int, seg_size: int, tmp: Path) -> dict[str, Any]:
    data = Photos(photos)
    cfg = TrainConfig(epochs=1, batch_size=32, images_per_class=4, device=device)
    result = Trainer(ModelConfig(image_size=size), cfg, tmp / "net.pt").fit(data, None)
    epoch = result.history[0]
    steps = max(1, len(data) // 32)
    out: dict[str, Any] = {
        "embedding": {
            "images": steps * 32,
            "image_size": size,
            "seconds": round(epoch.seconds, 2),
            "images_per_s": rate(steps * 32, epoch.seconds, 1),
        }
    }
    pairs = InMemoryPairs([(p, ellipse_mask(p.shape)) for p in photos])
    seg = SegTrainer(SegTrainConfig(epochs=1, batch_size=8, image_size=seg_size, device=device), tmp / "seg.pt")
    report = seg.fit(pairs, None).history[0]
    out["segmentation"] = {
        "images": len(pairs),
        "image_size": seg_size,
        "seconds": round(report.seconds, 2),
        "images_per_s": rate(len(pairs), report.seconds, 1),
    }
    out["loadavg"] = loadavg()
    return out


def cuda_tests_section() -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "needs_cuda",
        "-q",
        "-rs",
        "-p",
        "no:cacheprovider",
        "tests/test_gpu.py",
    ]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    lines = [line for line in run.stdout.strip().splitlines() if line.strip()]
    out: dict[str, Any] = {
        "command": "python " + " ".join(cmd[1:]),
        "returncode": run.returncode,
        "summary": lines[-1] if lines else run.stderr[-500:],
    }
    if run.returncode != 0:  # what failed, and why
        out["output_tail"] = lines[-60:]
    return out


# --------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = BenchParser(__doc__, out="gpu.json")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script on a CPU")
    ap.add_argument("--device", default="auto", help="where the network runs (default auto: the GPU if any)")
    ap.add_argument("--folder", type=Path, help=f"real photos (default {DEFAULT_FOLDER})")
    ap.add_argument("--images", type=int, default=4096, help="photos for the pipeline and training (default 4096)")
    ap.add_argument("--repeat", type=int, default=1, help="pipeline: index each photo under this many names")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sizes", default="1000000,10000000", help="search: collection sizes (default 1M,10M)")
    ap.add_argument("--dim", type=int, default=256, help="search: vector dimension (default 256)")
    ap.add_argument("--single-queries", type=int, default=50)
    ap.add_argument("--batch-queries", type=int, default=1000)
    ap.add_argument("--train-size", type=int, default=224)
    ap.add_argument("--train-images", type=int, default=1024)
    ap.add_argument("--skip", default="", help="sections to leave out, e.g. search,cuda_tests")
    args = ap.parse_args()
    if args.smoke:
        args.images, args.rounds, args.sizes, args.dim = 16, 1, "2000,20000", 64
        args.single_queries, args.batch_queries, args.train_size, args.train_images = 5, 20, 64, 32
        if args.out == "gpu.json":
            args.out = "gpu_smoke.json"
    skip = {s for s in args.skip.split(",") if s}
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    runtime = RuntimeOptions(device=args.device)
    result: dict[str, Any] = {
        "benchmark": "gpu",
        "smoke": args.smoke,
        "device": torch.cuda.get_device_name(device) if gpu else str(device),
        "machine": machine(
            cuda=torch.version.cuda, faiss_gpu=faiss_gpu_available(), gpus=torch.cuda.device_count() if gpu else 0
        ),
    }
    save = lambda: write_json(args.out, result, echo=False)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        _, files, origin = photo_files(args.folder, max(args.images, args.train_images), args.smoke, tmp)
        result["photos"] = origin
        if "pipeline" not in skip:
            pipeline_folder = tmp / "pipeline"  # the photos the pipeline indexes, and only those
            pipeline_folder.mkdir()
            for f in files[: args.images]:
                for r in range(args.repeat):  # each photo under --repeat names: more images than were carried
                    os.link(f, pipeline_folder / f"{r}_{Path(f).name}")
            pipeline_files = sorted(str(p) for p in pipeline_folder.iterdir())
            result["pipeline"] = pipeline_section(pipeline_folder, pipeline_files, runtime, args.rounds)
            save()
        if "precision" not in skip:
            result["precision"] = precision_section(files[: args.images], runtime, gpu)
            save()
        if "search" not in skip:
            result["search"] = {}
            for n in (int(s) for s in args.sizes.split(",")):
                result["search"][str(n)] = search_section(n, args.dim, args.single_queries, args.batch_queries, device)
                save()
        if "training" not in skip:
            photos = [item.image.pixels for _, item in decoded(files[: args.train_images], 2 * args.train_size)]
            result["training"] = training_section(
                photos, str(device), args.train_size, min(192, 2 * args.train_size), tmp
            )
            save()
    if "cuda_tests" not in skip:
        result["cuda_tests"] = cuda_tests_section()
    write_json(args.out, result)


if __name__ == "__main__":
    main()
