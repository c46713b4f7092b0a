"""The per-object index (``lookalike index --objects``) on images holding several unseen objects: mAP, the boxes it
returns, index size, search latency and indexing speed against the whole-image index.

Data: the held-out composites of ``benchmarks/bench_default_segmenter.py`` (its builder, ``ensure_set``: COIL-20
objects ``--objects``, default 11-20, each pasted onto a patch of a held-out Weizmann photo that keeps a good
part of its horse), never seen by the default segmenter's training. The database images hold several objects:
each is a ``--grid`` x ``--grid`` mosaic of database composites with different objects (seeded), so every image
holds that many objects, each over a horse of its own. Queries: the set's query composites (other poses, other
backgrounds); an image is relevant to a query when it holds the query's object.

Rows (mAP over the queries, every database image ranked):

- ``whole``: whole images, no mask;
- ``masked``: whole images masked by the default segmenter (``--mask``, applied ``both``);
- ``objects``: ``--mask --objects``, the query image whole (masked);
- ``objects_grid``: ``--objects`` without a mask (the fallback windows only);
- ``region_*``: the query searched by the box of its true mask (``search --box``) on the whole-image, masked and
  objects collections.

For the ``objects`` rows, ``box_iou``: the mean IoU of the box a relevant top hit returns with the true box of
the query's object in that image. ``index``: vectors and index file bytes of each collection; ``search_ms``:
milliseconds per query of ``search_ids`` (k=10, every database image a query; best of 3 rounds);
``indexing``: images/s of each collection's index run (decoding, masking, objects and embedding). The machine is
shared: the 1-minute load average is recorded with the timings.

    nice -n 10 python -m benchmarks.bench_objects
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.bench_default_segmenter import ensure_set
from benchmarks.common import RESULTS, BenchParser, machine, write_json
from benchmarks.composites import Manifest
from benchmarks.timing import Stopwatch, loadavg, rate
from indexer.engine import Collection
from indexer.masking import MaskSettings
from indexer.objects import ObjectSettings
from retrieval.config import ModelConfig, RuntimeOptions
from retrieval.metrics import average_precision
from segmentation import DEFAULT_SEGMENTER

Box = tuple[int, int, int, int]


@dataclass
class Item:
    """An image of the benchmark: its file and the ``(object, box)`` pairs it holds."""

    path: Path
    objects: list[tuple[int, Box]]


def build_mosaics(manifest: Manifest, root: Path, out: Path, grid: int, seed: int) -> list[Item]:
    """``grid`` x ``grid`` mosaics of the database composites in ``root``, each of different objects, in ``out``."""
    rng = np.random.default_rng(seed)
    records = [r for r in manifest.records if r.split == "database"]
    pool = [records[i] for i in rng.permutation(len(records))]
    per = grid * grid
    out.mkdir(parents=True, exist_ok=True)
    items: list[Item] = []
    while len(pool) >= per:
        chosen, seen = [], set()
        for r in list(pool):
            if r.object not in seen:
                chosen.append(r)
                seen.add(r.object)
                pool.remove(r)
            if len(chosen) == per:
                break
        if len(chosen) < per:
            break
        side = manifest.config.size
        canvas = Image.new("RGB", (grid * side, grid * side))
        objects = []
        for n, r in enumerate(chosen):
            ox, oy = (n % grid) * side, (n // grid) * side
            canvas.paste(Image.open(root / r.image).convert("RGB"), (ox, oy))
            objects.append((r.object, (r.x + ox, r.y + oy, r.width, r.height)))
        path = out / f"mosaic_{len(items):03d}.jpg"
        canvas.save(path, quality=95)
        items.append(Item(path, objects))
    return items


def box_iou(a: Box, b: Box) -> float:
    w = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    h = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return w * h / (a[2] * a[3] + b[2] * b[3] - w * h)


def score(coll: Collection, queries: list[Item], items: list[Item], region: bool) -> dict:
    """mAP (and recall@1) of ``queries`` over the collection's images; with ``region`` each query is searched by
    the box of its object; the mean IoU of the boxes relevant top hits return."""
    holders = {i.path.resolve(): {obj: box for obj, box in i.objects} for i in items}
    aps, top1, ious = [], [], []
    for q in queries:
        obj, box = q.objects[0]
        (result,) = coll.search([q.path], k=len(items), box=box if region else None)
        relevant = np.array([obj in holders[Path(h.path)] for h in result.hits])
        aps.append(average_precision(relevant, sum(obj in h for h in holders.values())))
        top1.append(bool(relevant[:1].any()))
        first = result.hits[0]
        if relevant[0] and first.box is not None:
            ious.append(box_iou(first.box, holders[Path(first.path)][obj]))
    out = {"mAP": round(float(np.mean(aps)), 4), "recall@1": round(float(np.mean(top1)), 4)}
    if ious:
        out["box_iou"] = round(float(np.mean(ious)), 4)
        out["box_iou>0.5"] = round(float(np.mean(np.array(ious) > 0.5)), 4)
    return out


def main() -> None:
    ap = BenchParser(__doc__, threads=1, seed=0, out="objects.json")
    ap.add_argument("--objects", default="11-20", help="held-out COIL-20 objects, e.g. 11-20")
    ap.add_argument("--composites", type=Path, default=None, help="held-out set folder (built when missing)")
    ap.add_argument("--grid", type=int, default=2, help="objects per image: a GRID x GRID mosaic (default 2)")
    ap.add_argument("--work", type=Path, default=RESULTS / "objects_bench", help="mosaics and collections")
    ap.add_argument("--pad", type=float, default=ObjectSettings.pad, help="object boxes widened by this share")
    ap.add_argument("--min-area", type=float, default=ObjectSettings.min_area, help="smallest object (image share)")
    ap.add_argument("--split", type=float, default=ObjectSettings.split, help="erosion that splits touching objects")
    args = ap.parse_args()
    lo, _, hi = args.objects.partition("-")
    objects = tuple(range(int(lo), int(hi or lo) + 1))
    root = args.composites or RESULTS / f"heldout_composites_{args.objects}"
    manifest = ensure_set(root, objects, args.seed)
    shutil.rmtree(args.work, ignore_errors=True)
    items = build_mosaics(manifest, root, args.work / "mosaics", args.grid, args.seed)
    queries = [
        Item(root / r.image, [(r.object, (r.x, r.y, r.width, r.height))])
        for r in manifest.records
        if r.split == "queries"
    ]
    runtime = RuntimeOptions(device="cpu", workers=2)
    mask = MaskSettings(segmenter=DEFAULT_SEGMENTER)
    on = ObjectSettings(enabled=True, pad=args.pad, min_area=args.min_area, split=args.split)
    setups = {
        "whole": (MaskSettings(), ObjectSettings()),
        "masked": (mask, ObjectSettings()),
        "objects": (mask, on),
        "objects_grid": (MaskSettings(), on),
    }
    colls: dict[str, Collection] = {}
    indexing: dict[str, dict] = {}
    index: dict[str, dict] = {}
    for name, (m, o) in setups.items():
        coll = Collection(args.work / "homes" / name, runtime=runtime)
        coll.configure(model=ModelConfig(), mask=m, objects=o)
        report = coll.index_folder(args.work / "mosaics")
        colls[name] = coll
        indexing[name] = {
            "images_per_second": rate(report.embedded, report.embed_seconds, 2),
            "loadavg": loadavg(),
        }
        st = coll.stats()
        home = Path(coll.home)
        files = {f: (home / f).stat().st_size for f in ("index.faiss", "objects.faiss") if (home / f).exists()}
        index[name] = {
            "image_vectors": st.index_vectors,
            "object_vectors": st.object_vectors,
            "images_with_fallback_windows": st.object_fallbacks,
            "file_bytes": files,
        }
        print(name, indexing[name], index[name], flush=True)
    for name in ("masked", "objects", "objects_grid"):
        indexing[name]["share_of_whole_speed"] = round(
            indexing[name]["images_per_second"] / indexing["whole"]["images_per_second"], 3
        )
    indexing["objects"]["share_of_masked_speed"] = round(
        indexing["objects"]["images_per_second"] / indexing["masked"]["images_per_second"], 3
    )

    retrieval: dict[str, dict] = {}
    for name in ("whole", "masked", "objects", "objects_grid"):
        retrieval[name] = score(colls[name], queries, items, region=False)
        print(name, retrieval[name], flush=True)
    for name in ("whole", "masked", "objects"):
        retrieval[f"region_{name}"] = score(colls[name], queries, items, region=True)
        print(f"region_{name}", retrieval[f"region_{name}"], flush=True)

    search_ms: dict[str, float] = {}
    for name in ("whole", "masked", "objects", "objects_grid"):
        coll = colls[name]
        ids = list(coll.images(range(1, 10 * len(items) + 1)))
        best = float("inf")
        for _ in range(3):
            with Stopwatch() as clock:
                coll.search_ids(ids, k=10)
            best = min(best, clock.seconds)
        search_ms[name] = round(1000 * best / len(ids), 3)
    search_ms["loadavg"] = loadavg()  # type: ignore[assignment]
    print("search ms per query", search_ms, flush=True)

    write_json(
        args.out,
        {
            "benchmark": "objects",
            "composites": str(root),
            "dataset": {
                "objects": list(objects),
                "database_images": len(items),
                "objects_per_image": args.grid * args.grid,
                "image_side": args.grid * manifest.config.size,
                "queries": len(queries),
            },
            "segmenter": DEFAULT_SEGMENTER,
            "object_settings": on.to_dict(),
            "retrieval": retrieval,
            "index": index,
            "search_ms_per_query": search_ms,
            "indexing": indexing,
            "machine": machine(),
        },
    )


if __name__ == "__main__":
    main()
