"""Embedding on Ray on this one machine against the plain pipeline: the same photos, in the same run.

Protocol: the 328 Weizmann horse photos (real JPEGs of mixed sizes; ``--data`` another folder, ``--images`` the
first N) are indexed into a fresh collection by each variant in turn, ``--rounds`` times, interleaved (plain,
Ray with 1 actor, Ray with 2 actors, plain, ...), so that a busy spell slows every variant alike:

- ``plain``: ``Collection.index_folder`` in this process (the pipeline's decoding threads, torch on every core);
- ``ray-N``: ``index_folder(ray=...)`` on a Ray started here once (its start is timed apart), N model actors
  sharing the cores (torch threads = cores / N each), decoding tasks beside them. Ray offers the cores plus one
  logical CPU for the decoding tasks, as the plain pipeline's decoding threads share the cores with the network.

A timed run is ``configure`` + ``index_folder``: the network built (in the driver, and in each actor on Ray),
every photo decoded, embedded, committed, and the index built. Reported per variant: seconds, images/s, the
embedding stage alone (``IndexReport.embed_seconds``), the CPU seconds this process and every process it started
spent (Ray's included; :class:`CpuMeter`), and Ray's overhead: its time and its CPU over the plain run's in the
same round; and the fixed cost of a run: one photo indexed into a fresh collection. On a busy machine the CPU figure is the fair one: wall time there depends on how many runnable
threads a variant puts against everyone else's (and the plain pipeline's decoding threads run at the lowest
priority). Then the ceiling of one driver: results per second it commits (``BatchWriter`` into SQLite,
1280-d vectors) with no embedding at all, and the CPU milliseconds the decoding stage alone spends per photo.
Checked: same counts as the plain run, every vector within cosine 0.9999 of the plain one. Other
processes share the CPU: the 1-minute load average is recorded at every run.

    python -m benchmarks.bench_ray [--images 328] [--rounds 2] [--actors 1,2] [--image-size 224]
"""

from __future__ import annotations

import logging
import os
import sqlite3
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from sqlalchemy import select

from benchmarks.common import BenchParser, machine, write_json
from benchmarks.shared_data import weizmann_photos
from benchmarks.timing import Stopwatch, loadavg, peak_rss_gb, rate
from indexer import db
from indexer.db import INDEXED, PENDING, ImageRecord
from indexer.engine import Collection
from indexer.imageio import IMAGE_EXTENSIONS
from indexer.pipeline import decoded
from indexer.ray_runner import RayOptions
from indexer.sync import BatchWriter
from retrieval.config import ModelConfig, RuntimeOptions

TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class CpuMeter:
    """CPU seconds (user + system) spent by this process and every process it started (Ray's raylet, workers and
    actors included) inside a ``with`` block, read from ``/proc`` every ``interval`` seconds so that processes that
    exit count too (all but their last interval). On a shared machine this is the fair measure of work: wall time
    depends on how many runnable threads a variant has against everyone else's. Linux only (``None`` elsewhere)."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval, self.seconds = interval, None
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _ours() -> dict[int, float]:
        """CPU seconds of this process and its descendants, by pid."""
        table: dict[int, tuple[int, float]] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat") as f:
                    text = f.read()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, ...
            table[int(name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS)
        ours, frontier = {os.getpid()}, [os.getpid()]
        while frontier:
            parent = frontier.pop()
            for pid, (ppid, _) in table.items():
                if ppid == parent and pid not in ours:
                    ours.add(pid)
                    frontier.append(pid)
        return {pid: table[pid][1] for pid in ours if pid in table}

    def _sample(self) -> None:
        for pid, cpu in self._ours().items():
            self._first.setdefault(pid, 0.0)
            self._last[pid] = cpu

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> CpuMeter:
        if os.path.isdir("/proc"):
            self._first = self._ours()
            self._last = dict(self._first)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
            self._sample()
            self.seconds = round(sum(cpu - self._first[pid] for pid, cpu in self._last.items()), 2)


def photo_folder(source: Path, images: int, root: Path) -> Path:
    """A folder of links to the first ``images`` photos of ``source`` (every variant reads the same files)."""
    folder = root / "photos"
    folder.mkdir(parents=True)
    photos = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)[:images]
    for p in photos:
        (folder / p.name).symlink_to(p.resolve())
    return folder


def vectors(home: Path) -> dict[str, np.ndarray]:
    with sqlite3.connect(home / "lookalike.db") as con:
        rows = con.execute("SELECT path, vector FROM images WHERE status = 'indexed'").fetchall()
    return {p: np.frombuffer(v, dtype=np.float32) for p, v in rows}


def min_cosine(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert sorted(a) == sorted(b), "the variants indexed different files"
    return min(float(a[k] @ b[k]) / float(np.linalg.norm(a[k]) * np.linalg.norm(b[k])) for k in a)


def driver_commit_rate(root: Path, rows: int, dim: int = 1280) -> float:
    """Results per second the driver can commit (``BatchWriter`` into SQLite, ``dim``-d float32 vectors, the
    collection's default batches), with no embedding at all: the ceiling of one driver however many workers
    feed it."""
    coll = Collection(root / "commit-rate")
    with coll.session() as s, s.begin():
        s.add_all([ImageRecord(path=f"/photos/{i:08d}.jpg", size=1, mtime_ns=1, status=PENDING) for i in range(rows)])
    with coll.session() as s:
        ids = list(s.scalars(select(ImageRecord.id)))
    vector = np.random.default_rng(0).standard_normal(dim).astype(np.float32).tobytes()
    with Stopwatch() as clock, BatchWriter(coll, ImageRecord, db.VECTOR_VERSION, total=rows) as writer:
        for i in ids:
            values = dict(id=i, status=INDEXED, error=None, vector=vector, width=640, height=480)
            writer.put(dict(values, content_hash=f"{i:032x}", mask_fraction=None, mask_fallback=None), indexed=True)
    return rate(rows, clock.seconds, 0)


def decode_cpu_ms(folder: Path, image_size: int) -> float:
    """CPU milliseconds per photo of the decoding stage alone (read, hash, decode, resize; one thread, the
    pipeline's own ``decoded``): what a decoding task spends per image, so how many cores feed one actor."""
    paths = sorted(str(p) for p in folder.iterdir())
    start = time.process_time()
    for _ in decoded(paths, image_size, workers=0):
        pass
    return round(1000 * (time.process_time() - start) / len(paths), 2)


def main() -> None:
    ap = BenchParser(__doc__, out="ray.json")
    ap.add_argument("--data", type=Path, help="a folder of photos (default: the shared Weizmann horse photos)")
    ap.add_argument("--images", type=int, default=328)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--actors", default="1,2", help="actor counts to run, comma-separated (default 1,2)")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--commit-rows", type=int, default=20_000, help="results committed to time the driver (0: skip)")
    args = ap.parse_args()
    import ray

    cores = os.cpu_count() or 1
    actor_counts = [int(a) for a in args.actors.split(",")]
    model = ModelConfig(image_size=args.image_size)
    runtime = RuntimeOptions(device="cpu", batch_size=args.batch_size)
    with Stopwatch() as ray_start:
        ray.init(num_cpus=cores + 1, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    variants: dict[str, RayOptions | None] = {"plain": None}
    for n in actor_counts:
        variants[f"ray-{n}"] = RayOptions(actors=n, cpus_per_actor=max(1, cores // n), decode_cpus=1)
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    fixed: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = photo_folder(args.data or weizmann_photos(), args.images, Path(tmp))
        reference: dict[str, np.ndarray] = {}
        for round_no in range(args.rounds):
            for name, options in variants.items():
                home = Path(tmp) / f"{name}-{round_no}"
                load = loadavg()
                with Stopwatch() as clock, CpuMeter() as cpu:
                    coll = Collection(home, runtime=runtime)
                    coll.configure(model=model)
                    report = coll.index_folder(folder, ray=options)
                got = vectors(home)
                if name == "plain" and not reference:
                    reference = got
                runs[name].append(
                    dict(
                        seconds=round(clock.seconds, 2),
                        images_per_s=rate(report.embedded, clock.seconds, 2),
                        embed_seconds=round(report.embed_seconds, 2),
                        cpu_seconds=cpu.seconds,
                        cpu_ms_per_image=round(1000 * cpu.seconds / report.embedded, 1) if cpu.seconds else None,
                        embedded=report.embedded,
                        skipped=len(report.skipped),
                        min_cosine_to_plain=round(min_cosine(reference, got), 6),
                        loadavg_before=load,
                        loadavg_after=loadavg(),
                        at=time.strftime("%H:%M:%S"),
                    )
                )
                print(name, runs[name][-1], flush=True)
        one = photo_folder(folder, 1, Path(tmp) / "one")  # the fixed cost of a run: one photo, fresh collection
        for name, options in variants.items():
            with Stopwatch() as clock:
                coll = Collection(Path(tmp) / f"{name}-one", runtime=runtime)
                coll.configure(model=model)
                coll.index_folder(one, ray=options)
            fixed[name] = dict(seconds=round(clock.seconds, 2), loadavg=loadavg())
        ray.shutdown()
        load = loadavg()
        decode_ms = decode_cpu_ms(folder, args.image_size)
        commit_rate = driver_commit_rate(Path(tmp), args.commit_rows) if args.commit_rows else None
    plain_s = [r["seconds"] for r in runs["plain"]]
    summary = {}
    for name, rs in runs.items():
        summary[name] = dict(
            median_seconds=round(statistics.median(r["seconds"] for r in rs), 2),
            median_images_per_s=round(statistics.median(r["images_per_s"] for r in rs), 2),
            median_embed_seconds=round(statistics.median(r["embed_seconds"] for r in rs), 2),
            time_over_plain=round(statistics.median(r["seconds"] / p for r, p in zip(rs, plain_s)), 3),
            median_cpu_ms_per_image=round(statistics.median(r["cpu_ms_per_image"] or 0 for r in rs), 1),
            one_photo_seconds=fixed[name]["seconds"],
            cpu_over_plain=round(
                statistics.median(r["cpu_seconds"] / p["cpu_seconds"] for r, p in zip(rs, runs["plain"])), 3
            )
            if all(r["cpu_seconds"] for r in rs + runs["plain"])
            else None,
            min_cosine_to_plain=min(r["min_cosine_to_plain"] for r in rs),
            same_counts_as_plain=all(
                (r["embedded"], r["skipped"]) == (p["embedded"], p["skipped"]) for r, p in zip(rs, runs["plain"])
            ),
        )
    write_json(
        args.out,
        {
            "benchmark": "ray_vs_plain_one_machine",
            "data": str(args.data or weizmann_photos()),
            "images": args.images,
            "model": model.describe(),
            "rounds": args.rounds,
            "ray_start_s": round(ray_start.seconds, 2),
            "ray_cpus_offered": cores + 1,
            "summary": summary,
            "one_photo_runs": fixed,
            "decode_cpu_ms_per_image": decode_ms,
            "driver_commit_results_per_s": commit_rate,
            "driver_commit_rows": args.commit_rows,
            "driver_commit_loadavg_before": load,
            "runs": runs,
            "driver_peak_rss_gb": peak_rss_gb(),
            "machine": machine(ray=ray.__version__),
        },
    )


if __name__ == "__main__":
    main()
