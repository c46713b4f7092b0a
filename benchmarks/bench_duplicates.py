"""Near-duplicate groups on a seeded set built from the shared data: lookalike at its calibrated threshold (the
default: vectors + geometric check; and vectors only, plain and ``--strict``) against perceptual hash,
difference hash and a CNN at imagededup's default thresholds; pair precision, recall, F1; time and peak memory;
the precision and recall the calibration promised against those measured; what the ``similar`` tier holds.

The set (``--work``, default ``benchmarks/results/duplicates-set``; seeded by ``--seed``):

- originals: COIL-20 objects in 3 poses each (0, 30 and 90 degrees: the same object in another pose is a
  distractor, similar but not a copy), LFW people with 2 photos each (the same person in another photo is a
  distractor), LFW people with 1 photo, Weizmann horse photos (horses on grass: one scene type);
- copies: half of the originals get 1 or 2 edited copies (:func:`indexer.copy_edits.edited_copy`: crops,
  resizes, small rotations, colour, JPEG, overlays, flips, 1-3 edits each), strength light / medium / strong in
  turn, saved as JPEG quality 90; a few originals get a byte-identical copy.

True groups: an original and its copies. Scores are over pairs: a method's pairs are every pair inside one of
its groups (lookalike) or the pairs it reports (the hashes and the CNN, as imagededup reports them).

Baselines (reimplemented here, as imagededup computes them): pHash (32 x 32 grey, 2-D DCT, the 8 x 8 low
frequencies against their median without the DC term) and dHash (9 x 8 grey, each pixel against its right
neighbour... by rows), 64 bits, Hamming distance <= 10 (imagededup's default ``max_distance_threshold``);
"CNN @ 0.9": the same lookalike vectors with every pair at cosine >= 0.9 (imagededup's default
``min_similarity_threshold`` for its CNN; its own MobileNet is not used here).

The calibration never sees the benchmark's copies: it makes its own edited copies of images of the collection
(which here holds the benchmark's originals and copies), with its own seed.

Keep it small on a shared 2-core machine (about 1,000 images; ``--lfw-singles``, ``--horses`` size it).
Run: ``python -m benchmarks.bench_duplicates``.
"""

from __future__ import annotations

import json
import shutil
import time
import tracemalloc
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import RESULTS, BenchParser, machine, require_dataset, write_json
from benchmarks.shared_data import COIL20, LFW, coil20, weizmann_photos
from benchmarks.timing import Stopwatch, loadavg, peak_rss_gb, rss_gb
from indexer.copy_edits import edited_copy
from indexer.duplicates import CHECKS_FILE, DuplicateFinder
from indexer.engine import Collection
from indexer.imageio import load_image
from retrieval.baselines import dct_matrix
from retrieval.config import RuntimeOptions

#: Pictures that are one photo twice inside the source datasets (found by this benchmark's false pairs, checked by
#: eye): their groups are one true group. LFW's Andrew_Gilligan_0001 is a known labelling error of LFW.
SAME_PICTURE_IN_SOURCES = (
    ("horse006.jpg", "horse018.jpg"),
    ("Andrew_Caldecott_0001.jpg", "Andrew_Gilligan_0001.jpg"),
)
IMAGEDEDUP_HASH_DISTANCE = 10
IMAGEDEDUP_CNN_SIMILARITY = 0.9


# --------------------------------------------------------------------------------------------- the set


def build_set(work: Path, seed: int, lfw_pairs: int, lfw_singles: int, horses: int) -> list[dict]:
    """Write the set under ``work/images`` -> manifest rows ``{path, group, kind, source, strength}``."""
    rng = np.random.default_rng(seed)
    images = work / "images"
    if images.exists():
        shutil.rmtree(images)
    (images / "originals").mkdir(parents=True)
    (images / "copies").mkdir()
    originals: list[tuple[Path, str]] = []  # (file, source: what a distractor of it shares)
    files, objects = coil20()
    for f, o in zip(files, objects):
        if Path(f).name.split("__")[1] in ("0.png", "6.png", "18.png"):
            originals.append((Path(f), f"coil-object-{o}"))
    lfw = require_dataset(LFW)
    people = sorted(d for d in lfw.iterdir() if d.is_dir())
    pairs = singles = 0
    for d in people:
        photos = sorted(d.glob("*.jpg"))
        if len(photos) >= 2 and pairs < lfw_pairs:
            originals += [(photos[0], f"lfw-{d.name}"), (photos[1], f"lfw-{d.name}")]
            pairs += 1
        elif len(photos) == 1 and singles < lfw_singles:
            originals.append((photos[0], f"lfw-{d.name}"))
            singles += 1
        if pairs >= lfw_pairs and singles >= lfw_singles:
            break
    horse_files = sorted(weizmann_photos().glob("*.jpg"))[:horses]
    originals += [(p, "horse") for p in horse_files]

    manifest: list[dict] = []
    strength = 0
    for g, (src, source) in enumerate(originals):
        dest = images / "originals" / f"{g:04d}_{src.name}"
        shutil.copy(src, dest)
        manifest.append(dict(path=str(dest.resolve()), group=g, kind="original", source=source, strength=None))
        if rng.random() < 0.5:
            img = Image.open(src).convert("RGB")
            for c in range(int(rng.integers(1, 3))):
                copy = edited_copy(img, rng, strength=strength)
                p = images / "copies" / f"{g:04d}_{c}_s{strength}_{'-'.join(copy.edits)}.jpg"
                copy.image.save(p, quality=90)
                manifest.append(dict(path=str(p.resolve()), group=g, kind="edited", source=source, strength=strength))
                strength = (strength + 1) % 3
        if rng.random() < 0.05:
            p = images / "copies" / f"{g:04d}_exact{src.suffix}"
            shutil.copy(src, p)
            manifest.append(dict(path=str(p.resolve()), group=g, kind="exact", source=source, strength=None))
    (work / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


# --------------------------------------------------------------------------------------------- baselines


_DCT32 = dct_matrix(32)


def phash(img: Image.Image) -> np.ndarray:
    """64-bit perceptual hash: 32 x 32 grey, 2-D DCT, the 8 x 8 lowest frequencies against their median
    (the DC term left out of the median)."""
    g = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.LANCZOS), np.float64)
    coef = (_DCT32 @ g @ _DCT32.T)[:8, :8].ravel()
    return coef > np.median(coef[1:])


def dhash(img: Image.Image) -> np.ndarray:
    """64-bit difference hash: 9 x 8 grey, each pixel brighter than its left neighbour."""
    g = np.asarray(img.convert("L").resize((9, 8), Image.Resampling.LANCZOS), np.int16)
    return (g[:, 1:] > g[:, :-1]).ravel()


def hash_pairs(bits: np.ndarray, max_distance: int) -> set[tuple[int, int]]:
    """Pairs at Hamming distance <= ``max_distance`` (every pair compared, as imagededup's brute force)."""
    b = bits.astype(np.int16)
    dist = b.shape[1] - (b @ b.T + (1 - b) @ (1 - b).T)
    i, j = np.nonzero(np.triu(dist <= max_distance, 1))
    return set(zip(i.tolist(), j.tolist()))


# --------------------------------------------------------------------------------------------- scoring


def source_duplicates(manifest: list[dict]) -> dict[int, int]:
    """Group -> the group it is merged into, for originals that are one picture twice in the sources."""
    group_of = {Path(m["path"]).name.split("_", 1)[1]: m["group"] for m in manifest if m["kind"] == "original"}
    return {group_of[b]: group_of[a] for a, b in SAME_PICTURE_IN_SOURCES if a in group_of and b in group_of}


def group_pairs(groups: list[list[int]]) -> set[tuple[int, int]]:
    out: set[tuple[int, int]] = set()
    for g in groups:
        g = sorted(g)
        out.update((a, b) for n, a in enumerate(g) for b in g[n + 1 :])
    return out


def score(found: set[tuple[int, int]], truth: set[tuple[int, int]], manifest: list[dict]) -> dict:
    tp = len(found & truth)
    precision = tp / len(found) if found else 1.0
    recall = tp / len(truth) if truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    fp = found - truth
    same_source = sum(manifest[a]["source"] == manifest[b]["source"] for a, b in fp)
    by_strength: dict[str, float] = {}
    for s in (0, 1, 2):
        pairs = {
            (a, b)
            for a, b in truth
            if manifest[a]["kind"] == "original"
            and manifest[b]["strength"] == s
            or manifest[b]["kind"] == "original"
            and manifest[a]["strength"] == s
        }
        if pairs:
            by_strength[str(s)] = round(len(pairs & found) / len(pairs), 4)
    return {
        "pairs_found": len(found),
        "pair_precision": round(precision, 4),
        "pair_recall": round(recall, 4),
        "pair_f1": round(f1, 4),
        "false_pairs": len(fp),
        "false_pairs_same_object_or_person_or_horse": same_source,
        "recall_original_vs_copy_by_strength": by_strength,
    }


def similar_composition(found: set[tuple[int, int]], truth: set[tuple[int, int]], manifest: list[dict]) -> dict:
    """What the ``similar`` tier's pairs are: copies the check missed, the set's distractors (the same object in
    another pose, the same person in another photo, another horse photo), or other pictures."""
    copies = found & truth
    same = {(a, b) for a, b in found - truth if manifest[a]["source"] == manifest[b]["source"]}
    return {
        "pairs": len(found),
        "copies_missed_by_the_check": len(copies),
        "same_object_or_person_or_horse": len(same),
        "other": len(found) - len(copies) - len(same),
    }


def main() -> None:
    p = BenchParser(__doc__, threads=2, workers=2, seed=0, out="duplicates.json")
    p.add_argument("--work", type=Path, default=RESULTS / "duplicates-set")
    p.add_argument("--lfw-pairs", type=int, default=60)
    p.add_argument("--lfw-singles", type=int, default=300)
    p.add_argument("--horses", type=int, default=100)
    p.add_argument("--precision-target", type=float, default=0.99)
    p.add_argument("--calibration-samples", type=int, default=100)
    p.add_argument("--reuse", action="store_true", help="reuse the set and the index already in --work")
    args = p.parse_args()
    require_dataset(COIL20)
    load_before = loadavg()
    work: Path = args.work
    home = work / "home"
    if args.reuse and (work / "manifest.json").exists():
        manifest = json.loads((work / "manifest.json").read_text())
        build_seconds = None
    else:
        if home.exists():
            shutil.rmtree(home)
        with Stopwatch() as build:
            manifest = build_set(work, args.seed, args.lfw_pairs, args.lfw_singles, args.horses)
        build_seconds = round(build.seconds, 1)
    pos = {m["path"]: i for i, m in enumerate(manifest)}
    same_group = source_duplicates(manifest)
    groups_true: dict[int, list[int]] = {}
    for i, m in enumerate(manifest):
        groups_true.setdefault(same_group.get(m["group"], m["group"]), []).append(i)
    truth = group_pairs(list(groups_true.values()))

    coll = Collection(home, runtime=RuntimeOptions(device="cpu", workers=args.workers))
    with Stopwatch() as index_clock:
        report = coll.index_folder(work / "images")
    finder = DuplicateFinder(coll)
    with Stopwatch() as cal_clock:
        cal = finder.calibrate(precision=args.precision_target, samples=args.calibration_samples, seed=args.seed + 1)
    results: dict[str, dict] = {}
    (home / CHECKS_FILE).unlink(missing_ok=True)  # every pair checked afresh (the calibration's features kept)
    # timed without tracemalloc, which slows the check's threads down (322 s with it; a direct run took 159 s); the
    # process's peak memory is reported at the end
    rss_before = rss_gb()
    with Stopwatch() as find_clock:
        found = finder.find(similar=True)
    with Stopwatch() as again_clock:  # nothing changed: the checks come from the home
        again = DuplicateFinder(coll).find()
    assert [[f.path for f in g.files] for g in again.groups] == [[f.path for f in g.files] for g in found.groups]
    results["lookalike (calibrated, verified)"] = {
        **score(group_pairs([[pos[f.path] for f in g.files] for g in found.groups]), truth, manifest),
        "candidate_threshold": cal.verify_candidate_threshold,
        "min_inliers": cal.verify_min_inliers,
        "group_seconds": round(find_clock.seconds, 3),
        "group_seconds_second_run": round(again_clock.seconds, 3),
        "group_rss_gb_before_after": [round(rss_before, 3), round(rss_gb(), 3)],
    }
    similar_tier = similar_composition(
        group_pairs([[pos[f.path] for f in g.files] for g in found.similar]), truth, manifest
    )
    similar_tier["threshold"] = found.similar_threshold
    with Stopwatch() as find_clock:
        found = finder.find(threshold=cal.threshold)
    look_groups = [[pos[f.path] for f in g.files] for g in found.groups]
    results["lookalike (calibrated)"] = {
        **score(group_pairs(look_groups), truth, manifest),
        "threshold": cal.threshold,
        "group_seconds": round(find_clock.seconds, 3),
    }
    strict = finder.find(threshold=cal.threshold_strict)
    results["lookalike (calibrated, --strict)"] = {
        **score(group_pairs([[pos[f.path] for f in g.files] for g in strict.groups]), truth, manifest),
        "threshold": cal.threshold_strict,
    }

    # the CNN baseline: every pair of lookalike vectors at cosine >= 0.9
    ids, vecs = coll.vectors()
    rows = finder._rows(ids)
    order = np.array([pos[p] for p in rows.paths])
    with Stopwatch() as cnn_clock:
        sims = vecs @ vecs.T
        i, j = np.nonzero(np.triu(sims >= IMAGEDEDUP_CNN_SIMILARITY, 1))
        cnn = {tuple(sorted((int(order[a]), int(order[b])))) for a, b in zip(i, j)}
    results["CNN @ 0.9 (lookalike vectors, imagededup's default)"] = {
        **score(cnn, truth, manifest),
        "group_seconds": round(cnn_clock.seconds, 3),
    }

    # the hashes
    with Stopwatch() as decode:
        imgs = [Image.fromarray(load_image(m["path"], max_side=None).pixels) for m in manifest]
    for name, fn in (("pHash", phash), ("dHash", dhash)):
        tracemalloc.start()
        with Stopwatch() as clock:
            bits = np.stack([fn(im) for im in imgs])
            pairs = hash_pairs(bits, IMAGEDEDUP_HASH_DISTANCE)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        results[f"{name} <= {IMAGEDEDUP_HASH_DISTANCE} (imagededup's default)"] = {
            **score(pairs, truth, manifest),
            "seconds_hash_and_pair": round(clock.seconds, 3),
            "peak_traced_mb": round(peak / 2**20, 1),
        }
    del imgs
    kinds = {k: sum(m["kind"] == k for m in manifest) for k in ("original", "edited", "exact")}
    write_json(
        args.out,
        {
            "benchmark": "duplicates",
            "set": {
                "images": len(manifest),
                **kinds,
                "true_pairs": len(truth),
                "merged_source_duplicates": len(same_group),
                "seed": args.seed,
                "build_seconds": build_seconds,
                "sources": "COIL-20 (3 poses x 20 objects), LFW deep-funneled, Weizmann horses",
            },
            "index": {"seconds": round(index_clock.seconds, 1), "embedded": report.embedded},
            "calibration": {
                **cal.to_dict(),
                "seconds": round(cal_clock.seconds, 1),
                "verified_promised_precision": cal.verify_expected_precision,
                "verified_measured_precision": results["lookalike (calibrated, verified)"]["pair_precision"],
                "verified_promised_recall": cal.verify_expected_recall,
                "verified_measured_recall": results["lookalike (calibrated, verified)"]["pair_recall"],
                "promised_precision": cal.expected_precision,
                "measured_precision": results["lookalike (calibrated)"]["pair_precision"],
                "promised_recall": cal.expected_recall,
                "measured_recall": results["lookalike (calibrated)"]["pair_recall"],
                "strict_measured_precision": results["lookalike (calibrated, --strict)"]["pair_precision"],
                "strict_promised_recall": cal.expected_recall_strict,
                "strict_measured_recall": results["lookalike (calibrated, --strict)"]["pair_recall"],
            },
            "methods": results,
            "similar_tier": similar_tier,
            "decode_seconds_for_hashes": round(decode.seconds, 1),
            "peak_rss_gb": peak_rss_gb(),
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
            "machine": machine(when=time.strftime("%Y-%m-%d %H:%M")),
        },
    )


if __name__ == "__main__":
    main()
