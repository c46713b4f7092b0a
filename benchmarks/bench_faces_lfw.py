"""LFW face verification with a real face front end: the default (YuNet + SFace) beside dlib, Haar + SFace and
our network.

Protocol. Data: LFW deep-funneled (Huang et al. 2007; Huang, Mattar, Lee & Learned-Miller 2012), 13,233
photos of 5,749 people, 250x250, the labelled person centred. Pairs: View 2 ``pairs.txt``, 10 folds of 300
"same" + 300 "different" pairs, folds disjoint in people. Score of a pair: cosine similarity of the two
images' L2-normalised vectors. Accuracy: the LFW "unrestricted, labelled outside data" protocol - for each
fold, the threshold that maximises accuracy on the other 9 folds is applied to it; the mean and standard
deviation of the 10 fold accuracies are reported (``retrieval.verification.kfold_verification`` via
``indexer.evaluate.score_pairs``, the code behind ``lookalike eval --pairs``; lookalike models embed through
``indexer.evaluate.embed_paths``), with ROC AUC and TAR at FAR 1e-3 / 1e-2 over all 6,000 pairs. No pair is dropped: an image where no face is found is still scored, from a fallback crop.

Rows (the first four go through :class:`indexer.faces.FaceGallery`, i.e. the face pipeline of ``lookalike
faces``, each in a fresh home; the gallery keeps the face nearest each photo's centre and leaves out pairs with a
photo where no face is found, counting them):

- ``default``: ``lookalike faces eval pairs.txt --root DIR --json`` run as a command with no option (a fresh
  ``--home``): YuNet -> similarity alignment on the ArcFace template -> SFace -> cosine. Also gives the sface
  backend's default threshold (``default_threshold_recomputed``: the mean of the 10 fold thresholds, each the
  best-accuracy threshold of the other 9 folds) and its TAR / FAR over all pairs.
- ``yunet-sface-aligncrop``: the same with OpenCV's ``FaceRecognizerSF.alignCrop`` instead of our alignment.
- ``haar-sface``: ``--detector haar`` (eye centres only) + SFace.
- ``haar-lookalike``: ``--detector haar --backend lookalike``: the untrained lookalike network (ImageNet Lite0 +
  GeM) on Haar-aligned 160 px crops, the default before YuNet + SFace.
- ``dlib``: dlib's own pipeline - HOG detector (no upsampling: LFW faces are ~110 px), the face nearest the
  centre, its 5-point shape predictor and ``compute_face_descriptor`` (150 px chip, padding 0.25, no
  jitter), the 128-d vectors L2-normalised. Fallback when no face is found: the median dlib box on LFW,
  (77, 89)-(183, 183).
- ``imagenet-aligned``: the untrained lookalike model (EfficientNet-Lite0 ImageNet + GeM) on the aligned
  crops written by ``python -m benchmarks.prepare_lfw_faces`` (Haar detector + eye cascade, similarity
  alignment, 160 px), embedded at 160 px.
- ``imagenet-whole``: the same model on the whole 250x250 photos at its default 224 px (no face
  detection), the figure in the README.
- ``trained`` (with ``--weights CKPT``): a trained lookalike checkpoint (``retrieval.model.Embedder``) on the
  same aligned crops; its model configuration is read from the checkpoint.
- ``trained-halves`` (with ``--trained-halves CKPT_1_5 CKPT_6_10``): our face network as the protocol wants it,
  no fold scored by a network that saw its people: the checkpoint trained on the people of folds 1-5 scores
  the pairs of folds 6-10 and the other the pairs of folds 1-5 (each half with the 5-fold protocol inside it);
  train them with ``python -m benchmarks.bench_train_lfw --data benchmarks/results/lfw-aligned-haar --halves
  both --keep``. Every row also reports its two halves scored the same way, and their mean, to compare with it.

Speed (same machine, same run, ``--speed-images`` photos decoded in memory, one thread): faces/s of
detection alone (Haar at the LFW settings and at the defaults, dlib HOG), and of the whole front end per
photo - detection + alignment + embedding - for Haar + ImageNet model and for dlib.

Published anchors (10 folds): FaceNet 99.63% (Schroff et al. 2015), dlib ResNet 99.38% (dlib.net).

Each row's vectors are cached in ``benchmarks/results/lfw_faces_cache/`` (reused while the image list and
model configuration match), so adding a row later costs only that row:
``--rows "" --weights CKPT --speed-images 0``.

    python -m benchmarks.prepare_lfw_faces                     # once: the aligned crops
    python -m benchmarks.bench_faces_lfw [--rows dlib,imagenet-aligned,imagenet-whole] [--weights CKPT]
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks.common import RESULTS, BenchParser, machine, set_threads, trained_config, write_json
from benchmarks.prepare_lfw_faces import lfw_detector
from benchmarks.shared_data import LFW_HALVES, in_folds, lfw_pairs, pair_paths
from benchmarks.timing import Stopwatch, rate
from indexer.evaluate import embed_paths, score_pairs
from indexer.imageio import load_image
from retrieval.config import ModelConfig, RuntimeOptions
from retrieval.faces import Face, align_face, build_detector
from retrieval.faces import centre_face as pick_face
from retrieval.model import Embedder

ANCHORS = {"FaceNet (published, 10 folds)": 0.9963, "dlib ResNet (published, 10 folds)": 0.9938}
ROWS = (
    "default",
    "yunet-sface-aligncrop",
    "haar-sface",
    "haar-lookalike",
    "dlib",
    "imagenet-aligned",
    "imagenet-whole",
)
DEFAULT_ROWS = ("default", "yunet-sface-aligncrop", "haar-sface", "haar-lookalike", "dlib")
#: detector, backend, SFace alignment of the gallery rows run in-process
GALLERY_ROWS = {
    "yunet-sface-aligncrop": ("yunet", "sface", "opencv"),
    "haar-sface": ("haar", "sface", "similarity"),
    "haar-lookalike": ("haar", "lookalike", None),
}
#: Median dlib HOG box over 300 random LFW deep-funneled photos (x1, y1 exclusive).
LFW_DLIB_BOX = (77.0, 89.0, 183.0, 183.0)


def summarise(metrics: dict[str, Any], pairs: int, **extra: Any) -> dict[str, Any]:
    out = {k: round(float(metrics[k]), 4) for k in ("accuracy", "accuracy_std", "auc", "tar@far=1e-3", "tar@far=1e-2")}
    out["fold_accuracies"] = [round(float(a), 4) for a in metrics["fold_accuracies"]]
    return {**out, "pairs": pairs, **extra}


def dlib_vectors(paths: list[str], cache: Path | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """dlib descriptors of ``paths`` (face nearest the centre, else the fallback box); cached in ``cache``."""
    from retrieval.faces import DlibFaceEncoder

    if cache is not None and cache.exists():
        data = np.load(cache, allow_pickle=False)
        if list(data["paths"]) == paths:
            info = json.loads(str(data["info"]))
            print(f"dlib vectors read from {cache}", flush=True)
            return dict(zip(paths, data["vectors"])), info
    det = lfw_detector("dlib-hog", max_side=250)
    enc = DlibFaceEncoder()
    vecs = np.zeros((len(paths), 128), np.float32)
    fallback = 0
    with Stopwatch() as clock:
        for i, p in enumerate(tqdm(paths, unit="img", desc="dlib")):
            img = load_image(p, None).pixels
            face = pick_face(det.detect(img), img.shape[1], img.shape[0])
            if face is None:
                fallback += 1
                face = Face(*LFW_DLIB_BOX)
            vecs[i] = enc.embed(img, [face])[0]
    info = {
        "images": len(paths),
        "fallback": fallback,
        "seconds": round(clock.seconds, 1),
        "images_per_second": rate(len(paths), clock.seconds, 2),
    }
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, paths=np.array(paths), vectors=vecs, info=json.dumps(info))
    return dict(zip(paths, vecs)), info


def pipeline_row(
    pairs: list, image_root: Path, lfw_root: Path, config: ModelConfig, workers: int, cache: Path | None
) -> dict[str, Any]:
    """The lookalike embedding pipeline (``indexer.evaluate.embed_paths``) on a folder in LFW layout, scored
    on the pairs with ``score_pairs``; the vectors are cached in ``cache`` (reused when the model
    configuration and the image list match)."""
    rel = relative_paths(pairs, lfw_root)
    paths = [str(image_root / r) for r in rel]
    key = json.dumps({"config": config.to_dict(), "root": str(image_root)}, sort_keys=True)
    if cache is not None and cache.exists():
        data = np.load(cache, allow_pickle=False)
        if str(data["key"]) == key and list(data["paths"]) == paths:
            print(f"vectors read from {cache}", flush=True)
            vecs, ok, info = data["vectors"], data["ok"], json.loads(str(data["info"]))
            return _score_rel(pairs, lfw_root, rel, vecs, ok, info)
    embedder = Embedder(config, RuntimeOptions(device="cpu", batch_size=32, workers=workers))
    with Stopwatch() as clock:
        vecs, ok_list, skipped, _ = embed_paths(paths, embedder, batch_size=32, workers=workers)
    ok = np.array(ok_list)
    info = {
        "images": int(ok.sum()),
        "skipped": len(skipped),
        "model": config.describe(),
        "seconds": round(clock.seconds, 1),
        "images_per_second": rate(len(paths), clock.seconds, 2),
    }
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, key=key, paths=np.array(paths), vectors=vecs, ok=ok, info=json.dumps(info))
    return _score_rel(pairs, lfw_root, rel, vecs, ok, info)


def _score_rel(
    pairs: list, lfw_root: Path, rel: list[str], vecs: np.ndarray, ok: np.ndarray, info: dict[str, Any]
) -> dict[str, Any]:
    """Score ``pairs`` (paths under ``lfw_root``) with vectors of the same relative paths in another folder."""
    return score_all(pairs, relative_vectors(lfw_root, rel, vecs, ok), info)


def relative_paths(pairs: list, lfw_root: Path) -> list[str]:
    """The images of ``pairs`` (under ``lfw_root``) as ``NAME/NAME_0001.jpg``, sorted: the same names in a folder
    of aligned crops."""
    return [os.path.relpath(p, lfw_root) for p in pair_paths(pairs)]


def relative_vectors(lfw_root: Path, rel: list[str], vecs: np.ndarray, ok: np.ndarray) -> dict[str, np.ndarray]:
    return {str(lfw_root / r): v for r, v, good in zip(rel, vecs, ok) if good}


def score_all(pairs: list, vectors: dict[str, np.ndarray], info: dict[str, Any]) -> dict[str, Any]:
    """All 10 folds, and each half on its own (5-fold protocol within the half), so that a row can be
    compared with the ``trained`` row, whose halves come from two networks."""
    metrics, n = score_pairs(pairs, vectors)
    out = summarise(metrics, n, **info)
    out["halves"] = {
        name: summarise(*score_pairs(in_folds(pairs, folds), vectors)) for name, folds in LFW_HALVES.items()
    }
    out["mean_of_halves"] = round(float(np.mean([h["accuracy"] for h in out["halves"].values()])), 4)
    return out


def eval_command(pairs_file: Path, root: Path) -> dict[str, Any]:
    """``lookalike --home TMP faces eval PAIRS --root ROOT --json``, no other option, as a command -> the row."""
    exe = Path(sys.executable).with_name("lookalike")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from indexer.cli import main; main()"]
    with tempfile.TemporaryDirectory() as home:
        args = ["--home", home, "faces", "eval", str(pairs_file), "--root", str(root), "--json"]
        print("running:", " ".join(["lookalike", *args]), flush=True)
        with Stopwatch() as clock:
            done = subprocess.run(cmd + args, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"lookalike faces eval failed ({done.returncode}): {done.stderr[-2000:]}")
    out = json.loads(done.stdout)
    m = out["metrics"]
    row = summarise(m, out["pairs"])
    thresholds = np.array(m["fold_thresholds"], float)
    row.update(
        command="lookalike faces eval PAIRS --root DIR --json (no other option, fresh --home)",
        settings=out["settings"],
        images=out["images"],
        images_without_face_or_unreadable=len(out["skipped"]),
        skipped=out["skipped"][:20],
        fold_thresholds=[round(float(t), 4) for t in thresholds],
        default_threshold_recomputed=round(float(thresholds.mean()), 3),
        threshold_at_far_1e_3=round(float(m["threshold@far=1e-3"]), 4),
        seconds=round(clock.seconds, 1),
        images_per_second=rate(out["images"], clock.seconds, 2),
    )
    return row


def gallery_row(
    pairs_file: Path, root: Path, detector: str, backend: str, alignment: str | None, workers: int
) -> dict[str, Any]:
    """The face gallery's ``evaluate`` (the code behind ``lookalike faces eval``) with these settings."""
    from indexer.faces import FaceGallery, default_face_embedder
    from retrieval.faces import SFaceEmbedder

    def embedder(settings: Any, runtime: RuntimeOptions) -> Any:
        if settings.backend == "sface" and alignment is not None:
            return SFaceEmbedder(alignment=alignment)
        return default_face_embedder(settings, runtime)

    with tempfile.TemporaryDirectory() as home:
        g = FaceGallery(
            home, runtime=RuntimeOptions(device="cpu", batch_size=32, workers=workers), face_embedder_factory=embedder
        )
        g.configure(detector=detector, backend=backend)
        with Stopwatch() as clock:
            rep = g.evaluate(pairs_file, root)
        describe = g.settings.describe()
    row = summarise(rep.metrics, rep.pairs)
    row.update(
        pipeline=describe + (f", alignment {alignment}" if alignment else ""),
        images=rep.images,
        images_without_face_or_unreadable=len(rep.skipped),
        seconds=round(clock.seconds, 1),
        images_per_second=rate(rep.images, clock.seconds, 2),
    )
    return row


def dlib_row(pairs: list, paths: list[str], cache: Path | None) -> dict[str, Any]:
    vectors, info = dlib_vectors(paths, cache)
    return score_all(pairs, vectors, {**info, "pipeline": "dlib-hog (upsample 0) + 5-point + resnet v1, L2n"})


def speed(paths: list[str], with_dlib: bool, size: int) -> dict[str, Any]:
    """faces/s (photos/s; LFW has one target face per photo) of detection alone and of the whole front end."""
    images = [load_image(p, None).pixels for p in paths]
    out: dict[str, Any] = {"photos": len(images), "photo_size": list(images[0].shape[:2])}
    detectors = {
        "yunet (default)": build_detector("yunet"),
        "haar (LFW settings: 160 px copy, faces >= 1/4)": lfw_detector("haar", 160),
        "haar (defaults)": build_detector("haar"),
    }
    if with_dlib:
        detectors["dlib-hog (upsample 0)"] = lfw_detector("dlib-hog", 250)
        detectors["dlib-hog (upsample 1)"] = build_detector("dlib-hog", upsample=1)
    detect_rates = {}
    for name, det in detectors.items():
        with Stopwatch() as clock:
            for img in images:
                det.detect(img)
        detect_rates[name] = rate(len(images), clock.seconds, 1)
    out["detection_faces_per_second"] = detect_rates

    full = {}
    from retrieval.faces import SFaceEmbedder

    yunet, sface = build_detector("yunet"), SFaceEmbedder()
    with Stopwatch() as clock:
        for img in images:
            face = pick_face(yunet.detect(img), img.shape[1], img.shape[0])
            if face is not None:
                sface.embed(img, [face])
    full["yunet + align + sface (the default)"] = rate(len(images), clock.seconds, 1)
    haar = lfw_detector("haar", 160)
    embedder = Embedder(ModelConfig(image_size=size), RuntimeOptions(device="cpu", batch_size=32, workers=0))
    align, embed = Stopwatch(), Stopwatch()
    crops = []
    with align:
        for img in images:
            face = pick_face(haar.detect(img), img.shape[1], img.shape[0])
            if face is not None:
                crops.append(align_face(img, face, size))
    with embed:
        for i in range(0, len(crops), 32):
            embedder.embed_batch(np.stack(crops[i : i + 32]))
    full["haar + align + imagenet lite0 (batches of 32)"] = rate(len(images), align.seconds + embed.seconds, 1)
    full["haar + align only"] = rate(len(images), align.seconds, 1)
    if with_dlib:
        from retrieval.faces import DlibFaceEncoder

        det, enc = lfw_detector("dlib-hog", 250), DlibFaceEncoder()
        with Stopwatch() as clock:
            for img in images:
                face = pick_face(det.detect(img), img.shape[1], img.shape[0])
                if face is not None:
                    enc.embed(img, [face])
        full["dlib-hog + 5-point + resnet descriptor"] = rate(len(images), clock.seconds, 1)
    out["detect_align_embed_faces_per_second"] = full
    return out


def main() -> None:
    ap = BenchParser(__doc__, threads=1, threads_for=("torch", "opencv"), workers=1, out="faces_lfw.json")
    ap.add_argument(
        "--rows", default=",".join(DEFAULT_ROWS), help=f"comma-separated subset of {', '.join(ROWS)} ('' for none)"
    )
    ap.add_argument(
        "--aligned",
        type=Path,
        default=RESULTS / "lfw-aligned-haar",
        help="aligned crops from benchmarks.prepare_lfw_faces",
    )
    ap.add_argument(
        "--weights", default=None, help="a trained lookalike checkpoint: adds a 'trained' row on the aligned crops"
    )
    ap.add_argument(
        "--trained-halves",
        nargs=2,
        metavar=("CKPT_1_5", "CKPT_6_10"),
        help="two checkpoints trained on the people of folds 1-5 and of folds 6-10 (bench_train_lfw "
        "--halves both --keep): each half is scored by the one that never saw its people",
    )
    ap.add_argument("--size", type=int, default=160, help="embedding size of the aligned crops")
    ap.add_argument("--pairs", type=Path, help="pairs file in LFW format (default: the shared View 2 pairs.txt)")
    ap.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="rows run side by side in this many processes (one thread each; the default row's command runs "
        "with the library's threads)",
    )
    ap.add_argument("--speed-images", type=int, default=200, help="photos timed for the speed figures (0: skip)")
    args = ap.parse_args()

    root, pairs_file, pairs = lfw_pairs(None, args.pairs)
    paths = pair_paths(pairs)
    rows = [r for r in args.rows.split(",") if r]
    unknown = set(rows) - set(ROWS)
    if unknown:
        ap.error(f"unknown rows {sorted(unknown)}; known: {', '.join(ROWS)}")
    needs_aligned = "imagenet-aligned" in rows or args.weights or args.trained_halves
    if needs_aligned and not args.aligned.is_dir():
        ap.error(f"{args.aligned} does not exist: run python -m benchmarks.prepare_lfw_faces first")

    results: dict[str, Any] = {}
    cache = RESULTS / "lfw_faces_cache"  # vectors of each row, so that a later run (e.g. --weights) only adds rows
    # The rows that read every photo, side by side: one process each when --jobs > 1 (the longest first).
    jobs: dict[str, tuple[Any, ...]] = {}
    if "dlib" in rows:
        jobs["dlib"] = (dlib_row, pairs, paths, cache / "dlib_hog.npz")
    if "default" in rows:
        jobs["default"] = (eval_command, pairs_file, root)
    for name, (detector, backend, alignment) in GALLERY_ROWS.items():
        if name in rows:
            jobs[name] = (gallery_row, pairs_file, root, detector, backend, alignment, args.workers)
    if args.jobs > 1 and len(jobs) > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            args.jobs, context, initializer=set_threads, initargs=(1, ("torch", "opencv"))
        ) as pool:
            futures = {name: pool.submit(*job) for name, job in jobs.items()}
            for name, future in futures.items():
                results[name] = future.result()
                print(name, results[name], flush=True)
    else:
        for name, (fn, *fn_args) in jobs.items():
            results[name] = fn(*fn_args)
            print(name, results[name], flush=True)
    if "imagenet-aligned" in rows:
        results["imagenet-aligned"] = pipeline_row(
            pairs, args.aligned, root, ModelConfig(image_size=args.size), args.workers, cache / "imagenet_aligned.npz"
        )
        results["imagenet-aligned"]["crops"] = str(args.aligned)
        print("imagenet-aligned", results["imagenet-aligned"], flush=True)
    if "imagenet-whole" in rows:
        results["imagenet-whole"] = pipeline_row(
            pairs, root, root, ModelConfig(), args.workers, cache / "imagenet_whole.npz"
        )
        print("imagenet-whole", results["imagenet-whole"], flush=True)
    if args.weights:
        config = trained_config(args.weights, image_size=args.size)
        results["trained"] = pipeline_row(pairs, args.aligned, root, config, args.workers, None)
        results["trained"]["crops"] = str(args.aligned)
        print("trained", results["trained"], flush=True)

    if args.trained_halves:
        halves = {}
        # the network trained on folds 1-5 scores folds 6-10, and the other way round
        for ckpt, (name, folds) in zip(reversed(args.trained_halves), LFW_HALVES.items()):
            config = trained_config(ckpt, image_size=args.size)
            embedder = Embedder(config, RuntimeOptions(device="cpu", batch_size=32, workers=args.workers))
            half_pairs = in_folds(pairs, folds)
            half_rel = relative_paths(half_pairs, root)
            vecs, ok, _, _ = embed_paths([str(args.aligned / r) for r in half_rel], embedder, 32, args.workers)
            halves[name] = {
                **summarise(*score_pairs(half_pairs, relative_vectors(root, half_rel, vecs, np.array(ok)))),
                "checkpoint": str(ckpt),
                "model": config.describe(),
            }
            print("trained", name, halves[name], flush=True)
        results["trained-halves"] = {
            "halves": halves,
            "mean_of_halves": round(float(np.mean([h["accuracy"] for h in halves.values()])), 4),
            "crops": str(args.aligned),
        }

    payload: dict[str, Any] = {
        "benchmark": "lfw_view2_faces",
        "pairs_file": str(pairs_file),
        "rows": results,
        "anchors": ANCHORS,
    }
    prepared = RESULTS / "prepare_lfw_faces_haar.json"
    if needs_aligned and prepared.exists():
        p = json.loads(prepared.read_text())
        payload["aligned_crops"] = {
            k: p.get(k) for k in ("images", "detected", "fallback", "several_faces", "eyes_estimated", "size", "margin")
        }
    if args.speed_images:
        from retrieval.faces import dlib_available

        rng = np.random.default_rng(0)
        sample = [paths[i] for i in sorted(rng.choice(len(paths), min(args.speed_images, len(paths)), replace=False))]
        payload["speed"] = speed(sample, dlib_available(), args.size)
    payload["machine"] = machine()
    write_json(args.out, payload)


if __name__ == "__main__":
    main()
