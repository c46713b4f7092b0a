"""``lookalike serve`` over HTTP on a 100,000-image collection: search latency by id ("more like this") at 1 and 20
concurrent clients, upload-and-embed latency, thumbnail throughput (cold / warm).

Collection (made once in ``--home``, reused by later runs with the same ``--n``): ``--n`` synthetic clustered
1280-d vectors (``benchmarks.bench_duplicates_scale.synthetic``, the default model's dimension) written straight
to the database, every row pointing at a symbolic link to one small JPEG (search leaves out files that are gone, so
the paths must exist); then ``--photos`` real JPEGs (drawn, with noise, ``--photo-size`` pixels) indexed through
``Collection.index_folder`` with the real network, which also learns the collection's shrunk whitening (1280 ->
256) and builds its index as the collection would (``auto``: HNSW at this size).

Server: the real command, ``python -m indexer.cli --home HOME serve --port 0``, in a subprocess (uvicorn, one
worker process, its defaults). Clients: threads of this process, each with its own keep-alive connection
(``http.client``); they share the CPU with the server, so the 20-client figures include the clients' own cost.

- search by id: ``GET /api/v1/images/{id}/similar?k=20`` for random ids, ``--requests`` requests at each
  concurrency (after ``--warmup`` requests); latency p50 / p95 / mean in ms, and requests/s. The same searches
  through the Python API in this process (``Collection.search_ids``) give the cost without HTTP.
- upload and embed: ``POST /api/v1/search`` with one of the photos (multipart), ``--uploads`` in a row, 1 client,
  against servers run with each ``--serve-threads`` value (``lookalike serve --threads``), taking turns.
- thumbnails: ``GET /api/v1/images/{id}/thumbnail?size=256`` of every photo, first with an empty cache (decode,
  resize, write) then again (cached), 1 client; images/s.
- after another process commits: the version counter is bumped as an index run's batch does, and one search is
  timed (the server rebuilds its index from the database), then the next.

The 1-minute load average is recorded before and after each part (other processes share the 2 cores).

Run: ``python -m benchmarks.bench_serve`` (the first run builds the collection: a few minutes).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy import insert

from benchmarks.bench_duplicates_scale import synthetic
from benchmarks.common import RESULTS, BenchParser, machine, write_json
from benchmarks.timing import Stopwatch, loadavg
from indexer import db
from indexer.db import INDEXED, ImageRecord
from indexer.engine import Collection, WhiteningSettings
from indexer.store import write_lock
from retrieval.config import ModelConfig

MODEL_DIM = 1280


def photo(seed: int, size: tuple[int, int]) -> Image.Image:
    """A photo-sized picture: smooth colour fields with sensor-like noise (so it compresses like a photo)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    base = np.asarray(coarse.resize(size, Image.Resampling.BICUBIC), np.int16)
    noisy = base + rng.normal(0, 6, base.shape).astype(np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def build_collection(home: Path, n: int, photos: int, photo_size: tuple[int, int], seed: int) -> dict:
    """The benchmark's collection in ``home`` (see the module docstring). Returns what it took."""
    if home.exists():
        shutil.rmtree(home)
    files = home / "files"
    (files / "photos").mkdir(parents=True)
    (files / "links").mkdir()
    for i in range(photos):
        photo(seed + i, photo_size).save(files / "photos" / f"photo_{i:03d}.jpg", quality=90)
    small = files / "small.jpg"
    photo(seed + 999, (640, 480)).save(small, quality=85)
    st = small.stat()
    coll = Collection(home / "collection")
    coll.configure(model=ModelConfig(), whitening=WhiteningSettings(enabled=True, dim=256))
    with Stopwatch() as gen:
        vectors, _ = synthetic(n, MODEL_DIM, clusters=3000, copy_share=0.0, seed=seed)
    with Stopwatch() as write, write_lock(coll.home):
        for start in range(0, n, 5000):
            rows = []
            for i in range(start, min(n, start + 5000)):
                link = files / "links" / f"{i:06d}.jpg"
                os.symlink(small, link)
                rows.append(
                    dict(
                        path=str(link),
                        size=st.st_size,
                        mtime_ns=st.st_mtime_ns,
                        content_hash=f"{i:032x}",
                        width=640,
                        height=480,
                        status=INDEXED,
                        vector=vectors[i].tobytes(),
                    )
                )
            with coll.session() as s, s.begin():
                s.execute(insert(ImageRecord), rows)
                if start == 0:
                    db.set_setting(s, "model_dim", MODEL_DIM)
                db.bump_vector_version(s)
    with Stopwatch() as index:
        report = coll.index_folder(files / "photos")  # the real photos, the whitening, the index
    return {
        "generate_seconds": round(gen.seconds, 1),
        "write_seconds": round(write.seconds, 1),
        "index_seconds": round(index.seconds, 1),
        "index_kind": report.index_kind,
        "indexed": report.total_indexed,
    }


# --------------------------------------------------------------------------------------------- the HTTP client


class Client:
    """One keep-alive HTTP connection."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def get(self, url: str) -> tuple[int, bytes]:
        self.conn.request("GET", url)
        r = self.conn.getresponse()
        return r.status, r.read()

    def post_file(self, url: str, name: str, data: bytes) -> tuple[int, bytes]:
        boundary = "lookalike-bench-boundary"
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        body += (
            data
            + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="k"\r\n\r\n20\r\n--{boundary}--\r\n'.encode()
        )
        self.conn.request("POST", url, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        r = self.conn.getresponse()
        return r.status, r.read()

    def close(self) -> None:
        self.conn.close()


def summary(latencies: list[float], seconds: float | None = None) -> dict:
    ms = np.asarray(latencies) * 1000
    out = {
        "requests": len(ms),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "mean_ms": round(float(ms.mean()), 2),
    }
    if seconds:
        out["per_second"] = round(len(ms) / seconds, 1)
    return out


def concurrent_gets(port: int, urls: list[str], clients: int) -> dict:
    """``urls`` fetched by ``clients`` threads (each its own connection), each taking the next URL in turn."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    todo = iter(urls)

    def work() -> None:
        c = Client(port)
        try:
            while True:
                with lock:
                    url = next(todo, None)
                if url is None:
                    return
                t0 = time.perf_counter()
                status, body = c.get(url)
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    if status != 200:
                        errors.append(f"{status} {body[:200]!r}")
        finally:
            c.close()

    threads = [threading.Thread(target=work) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out = summary(latencies, time.perf_counter() - t0)
    out["clients"], out["errors"] = clients, len(errors)
    if errors:
        out["first_error"] = errors[0]
    return out


def start_server(home: Path, *options: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "indexer.cli", "--home", str(home), "serve", "--port", "0", *options],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    if m is None:
        proc.kill()
        sys.exit(f"the server did not start: {line!r}")
    return proc, int(m.group(1))


def main() -> None:
    p = BenchParser(__doc__, seed=0, out="serve.json")
    p.add_argument("--n", type=int, default=100_000, help="synthetic images (default 100,000)")
    p.add_argument("--photos", type=int, default=40, help="real photos (thumbnails, uploads)")
    p.add_argument("--photo-size", default="2048x1536")
    p.add_argument("--home", type=Path, default=RESULTS / "serve_home", help="where the collection is kept")
    p.add_argument("--rebuild", action="store_true", help="make the collection again even if it exists")
    p.add_argument("--requests", type=int, default=400, help="searches by id at each concurrency")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--clients", default="1,20")
    p.add_argument("--uploads", type=int, default=20)
    p.add_argument(
        "--serve-threads", default="1,2", help="lookalike serve --threads values for the uploads (the first: all)"
    )
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--build-only", action="store_true", help="make the collection and stop")
    p.add_argument(
        "--no-stale", action="store_true", help="skip the search right after a simulated commit of another process"
    )
    args = p.parse_args()
    size = tuple(int(v) for v in args.photo_size.split("x"))
    marker = args.home / "bench.json"
    built = None
    if args.rebuild or not marker.exists() or json.loads(marker.read_text()).get("n") != args.n:
        load = loadavg()
        built = build_collection(args.home, args.n, args.photos, size, args.seed)  # type: ignore[arg-type]
        built["loadavg_before"], built["loadavg_after"] = load, loadavg()
        marker.write_text(json.dumps({"n": args.n, **built}))
        print(json.dumps(built))
    if args.build_only:
        return
    home = args.home / "collection"
    coll = Collection(home, create=False)
    infos = coll.images(range(1, args.n + args.photos + 1))
    synthetic_ids = [i for i, r in infos.items() if "/links/" in r.path]
    photo_ids = sorted(i for i, r in infos.items() if "/photos/" in r.path)
    rng = random.Random(args.seed)
    queries = [rng.choice(synthetic_ids) for _ in range(args.requests + args.warmup)]

    # the same searches without HTTP, in this process
    coll.search_ids(queries[: args.warmup], k=args.k)
    direct = []
    load = loadavg()
    for q in queries[args.warmup : args.warmup + min(200, args.requests)]:
        t0 = time.perf_counter()
        coll.search_ids([q], k=args.k)
        direct.append(time.perf_counter() - t0)
    in_process = {**summary(direct), "loadavg_before": load, "loadavg_after": loadavg()}
    stats = coll.stats()

    shutil.rmtree(home / "thumbnails", ignore_errors=True)  # thumbnails start cold
    proc, port = start_server(home, "--threads", args.serve_threads.split(",")[0])
    results: dict = {}
    try:
        c = Client(port)
        for _ in range(100):
            try:
                if c.get("/api/v1/stats")[0] == 200:
                    break
            except OSError:
                c.close()
                c = Client(port)
                time.sleep(0.2)
        with Stopwatch() as first:
            status, _ = c.get(f"/api/v1/images/{queries[0]}/similar?k={args.k}")
        assert status == 200
        c.close()
        urls = [f"/api/v1/images/{q}/similar?k={args.k}" for q in queries]
        concurrent_gets(port, urls[: args.warmup], 1)
        by_id = {}
        for n in (int(v) for v in args.clients.split(",")):
            load = loadavg()
            run = concurrent_gets(port, urls[args.warmup :], n)
            by_id[f"{n}_clients"] = {**run, "loadavg_before": load, "loadavg_after": loadavg()}
        results["search_by_id"] = {"first_request_ms": round(first.seconds * 1000, 1), **by_id}

        # upload and embed: the server above (serve's default --threads) and one more per other --serve-threads
        # value, taking turns request by request
        photo_paths = [infos[i].path for i in photo_ids]
        datas = [Path(p_).read_bytes() for p_ in photo_paths]
        threads = [int(v) for v in args.serve_threads.split(",")]
        extra = {t: start_server(home, "--threads", str(t)) for t in threads[1:]}
        try:
            ports = {threads[0]: port, **{t: pp[1] for t, pp in extra.items()}}
            clients = {t: Client(pt) for t, pt in ports.items()}
            first_upload = {}
            for t, cl in clients.items():
                for _ in range(100):  # the extra servers may still be starting
                    try:
                        with Stopwatch() as first:
                            status, body = cl.post_file("/api/v1/search", "photo.jpg", datas[0])
                        break
                    except OSError:
                        cl.close()
                        cl = clients[t] = Client(ports[t])
                        time.sleep(0.2)
                assert status == 200, body[:300]
                first_upload[t] = round(first.seconds * 1000, 1)
                for d in datas[1:6]:  # the first few batches of a new shape are slower (allocator, oneDNN)
                    cl.post_file("/api/v1/search", "photo.jpg", d)
            upload_lat: dict[int, list[float]] = {t: [] for t in clients}
            load = loadavg()
            for i in range(args.uploads):
                for t, cl in clients.items():
                    t0 = time.perf_counter()
                    status, body = cl.post_file("/api/v1/search", "photo.jpg", datas[(i + 6) % len(datas)])
                    upload_lat[t].append(time.perf_counter() - t0)
                    assert status == 200, body[:300]
            load_after = loadavg()
            for cl in clients.values():
                cl.close()
        finally:
            for proc_, _ in extra.values():
                proc_.terminate()
                proc_.wait(30)
        results["upload_and_embed"] = {
            f"threads_{t}": {**summary(lat), "first_upload_ms": first_upload[t]} for t, lat in upload_lat.items()
        } | {
            "photo_size": args.photo_size,
            "photo_bytes_mean": int(np.mean([len(d) for d in datas])),
            "loadavg_before": load,
            "loadavg_after": load_after,
        }
        c = Client(port)

        # thumbnails: cold, then warm
        thumbs = {}
        for phase in ("cold", "warm"):
            lat = []
            load = loadavg()
            t_all = time.perf_counter()
            for i in photo_ids:
                t0 = time.perf_counter()
                status, body = c.get(f"/api/v1/images/{i}/thumbnail?size=256")
                lat.append(time.perf_counter() - t0)
                assert status == 200, body[:300]
            secs = time.perf_counter() - t_all
            thumbs[phase] = {
                **summary(lat),
                "images_per_second": round(len(lat) / secs, 1),
                "loadavg_before": load,
                "loadavg_after": loadavg(),
            }
        results["thumbnails_256"] = thumbs

        # another process commits a batch (as an index run does every ~2 s) and still holds the collection: the
        # next search catches the index it holds up with the committed rows (indexer.index_cache)
        if not args.no_stale:
            with write_lock(coll.home):
                with coll.session() as s, s.begin():
                    db.bump_vector_version(s)
                load = loadavg()
                with Stopwatch() as stale:
                    status, body = c.get(f"/api/v1/images/{queries[1]}/similar?k={args.k}")
                assert status == 200, body[:300]
                with Stopwatch() as after:
                    c.get(f"/api/v1/images/{queries[2]}/similar?k={args.k}")
            results["search_after_another_process_commits"] = {
                "first_ms": round(stale.seconds * 1000, 1),
                "next_ms": round(after.seconds * 1000, 1),
                "loadavg_before": load,
                "loadavg_after": loadavg(),
            }
        c.close()
    finally:
        proc.terminate()
        proc.wait(30)

    write_json(
        args.out,
        {
            "benchmark": "serve",
            "n": args.n,
            "collection": {
                "images": stats.images,
                "index_kind": stats.index_kind,
                "dim": stats.dim,
                "whitening": stats.whitening,
                "model": stats.model,
                "built_now": built,
            },
            "k": args.k,
            "in_process_search_by_id": in_process,
            **results,
            "goal": "search by id over HTTP, 1 client: p50 < 50 ms",
            "machine": machine(when=time.strftime("%Y-%m-%d %H:%M")),
        },
    )


if __name__ == "__main__":
    main()
