"""Helpers shared by the benchmark scripts: the argument prelude, dataset location, JSON output, the machine
description, trained checkpoints.

Siblings: ``benchmarks.timing`` (stopwatch, warm-up, interleaved rounds) and ``benchmarks.shared_data`` (the
shared datasets' loaders). Images are decoded by the library (``indexer.imageio.load_image``,
``indexer.pipeline``), never by a benchmark's own copy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from retrieval.config import ModelConfig

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("LOOKALIKE_SHARED_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "benchmarks" / "results"


def require_dataset(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.exists():
        sys.exit(f"dataset missing: {path} (set LOOKALIKE_SHARED_DATA to the folder holding the shared datasets)")
    return path


def machine(**extra: Any) -> dict[str, Any]:
    """Python, torch, CPUs and torch threads of this run, and any ``extra`` entries after them."""
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        **extra,
    }


def result_path(target: str | Path) -> Path:
    """Where a result goes: a ``str`` is a file name inside ``benchmarks/results/``, a ``Path`` is used as is."""
    return target if isinstance(target, Path) else RESULTS / target


def write_json(target: str | Path, payload: dict[str, Any], echo: bool = True) -> Path:
    """Write ``payload`` as indented JSON to :func:`result_path` ``(target)`` and print it (unless not ``echo``)."""
    path = result_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, indent=2)
    path.write_text(text + "\n")
    if echo:
        print(text)
    return path


# --------------------------------------------------------------------------------------------- argument prelude

#: Libraries whose thread pools ``--threads`` can size.
THREAD_POOLS = ("torch", "opencv", "faiss")


def set_threads(n: int, pools: Sequence[str] = ("torch",)) -> None:
    """Size the thread pools of ``pools`` (names from :data:`THREAD_POOLS`) to ``n`` threads."""
    unknown = set(pools) - set(THREAD_POOLS)
    if unknown:
        raise ValueError(f"unknown thread pools {sorted(unknown)}; known: {', '.join(THREAD_POOLS)}")
    if "torch" in pools:
        import torch

        torch.set_num_threads(n)
    if "opencv" in pools:
        import cv2

        cv2.setNumThreads(n)
    if "faiss" in pools:
        import faiss

        faiss.omp_set_num_threads(n)


class BenchParser(argparse.ArgumentParser):
    """The argument prelude every benchmark starts with: its docstring as the help (kept as written), and the
    shared options it asks for, each spelled and defaulted the same way everywhere.

    ``threads``: ``--threads`` with that default, sizing ``threads_for`` (see :func:`set_threads`) as soon as
    the arguments are parsed; ``workers``: ``--workers``, the decoding threads of the library's pipeline;
    ``precision``: ``--precision fp32|bf16``; ``seed``: ``--seed``; ``out``: ``--out``, the result JSON (a
    file name inside ``benchmarks/results/``, or a path when the default is a ``Path``; see
    :func:`write_json`); ``lfw_data``: ``--data``, a folder in LFW's ``NAME/NAME_0001.jpg`` layout (default:
    the shared deep-funneled photos). Options left at ``None`` / ``False`` are not added.
    """

    def __init__(
        self,
        doc: str | None,
        *,
        threads: int | None = None,
        threads_for: Sequence[str] = ("torch",),
        workers: int | None = None,
        precision: bool = False,
        seed: int | None = None,
        out: str | Path | None = None,
        lfw_data: bool = False,
    ) -> None:
        super().__init__(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        self.threads_for = tuple(threads_for)
        if threads is not None:
            self.add_argument(
                "--threads",
                type=int,
                default=threads,
                help=f"{' and '.join(self.threads_for)} threads (default {threads})",
            )
        if workers is not None:
            self.add_argument(
                "--workers",
                type=int,
                default=workers,
                help=f"decoding threads of the lookalike pipeline (default {workers})",
            )
        if precision:
            self.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
        if seed is not None:
            self.add_argument("--seed", type=int, default=seed)
        if out is not None:
            where = "path" if isinstance(out, Path) else "file name in benchmarks/results/"
            self.add_argument("--out", type=type(out), default=out, help=f"result JSON {where} (default {out})")
        if lfw_data:
            self.add_argument(
                "--data",
                type=Path,
                help="LFW images in NAME/NAME_0001.jpg layout (default: the "
                "shared deep-funneled photos; e.g. aligned face crops)",
            )

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        parsed = super().parse_args(args, namespace)
        if getattr(parsed, "threads", None) is not None:
            set_threads(parsed.threads, self.threads_for)
        return parsed


# --------------------------------------------------------------------------------------------- checkpoints


def trained_config(checkpoint: str | Path, **overrides: Any) -> ModelConfig:
    """The model configuration of a network trained by ``lookalike train``, with ``weights`` pointing at the
    checkpoint (so that ``EmbeddingNet`` / ``Embedder`` load it) and ``overrides`` (e.g. ``image_size``)."""
    from retrieval.checkpoint import load_checkpoint
    from retrieval.config import ModelConfig

    stored = load_checkpoint(checkpoint)["model_config"]
    return ModelConfig.from_dict({**stored, "weights": str(checkpoint), **overrides})
