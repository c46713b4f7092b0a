"""Detect and align the face of every LFW photo, writing aligned crops in LFW's own layout.

Every ``DATA/NAME/NAME_0001.jpg`` becomes ``OUT/NAME/NAME_0001.jpg``: an ``S x S`` crop (160 px by default)
of the face, eyes level and at fixed places, made by the library's face front end
(``retrieval.faces.face_crops``: detect, pick, align). LFW photos are 250x250 with the person of the label
centred, so when several faces are found the one whose box centre is nearest the image centre is taken
(``retrieval.faces.centre_face``); when none is found, the crop is cut around the place where LFW's
deep-funneled eyes usually are (eye centres (104.5, 113.5) and (145.5, 113.5): the mean of dlib's
landmarks over 300 random LFW photos, spread ~2.5 px) and counted as a fallback.

The output folder can then be evaluated unchanged, e.g.::

    lookalike eval benchmarks/results/lfw-aligned-haar --pairs ../shared/data/lfw/pairs.txt

It is resumable: images already written are skipped (their outcome is read back from
``OUT/_manifest.jsonl``), and each crop is written to a temporary name then renamed, so an interruption
leaves no half-written file. A JSON summary (detected / fallback counts, images/s) is printed and written to
``benchmarks/results/prepare_lfw_faces_<detector>.json``.

    python -m benchmarks.prepare_lfw_faces [--detector haar|dlib-hog|dlib-cnn] [--out DIR] [--size 160]
        [--margin 0.2] [--max-side 160] [--limit N] [--workers 2]
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from benchmarks.common import RESULTS, BenchParser, machine, require_dataset, set_threads, write_json
from benchmarks.shared_data import LFW
from benchmarks.timing import Stopwatch, rate
from indexer.pipeline import decoded
from retrieval.faces import (
    DEFAULT_MARGIN,
    FaceDetector,
    alignment_matrix,
    build_detector,
    centre_face,
    face_crops,
    warp,
)

#: Where LFW deep-funneled photos have their eyes (image-left first), used when no face is found.
LFW_EYES = np.array([[104.5, 113.5], [145.5, 113.5]], dtype=np.float32)
MANIFEST = "_manifest.jsonl"


def lfw_detector(name: str, max_side: int) -> FaceDetector:
    """The detector tuned for LFW: faces there fill 40-50% of a 250 px photo, so Haar looks for faces of at
    least a quarter of the (downscaled) photo, and dlib's HOG needs no upsampling."""
    if name == "haar":
        return build_detector("haar", max_side=max_side, min_face=0.25)
    if name == "dlib-hog":
        return build_detector("dlib-hog", upsample=0, max_side=max_side)
    return build_detector(name, upsample=0, max_side=max_side)


def align_lfw(
    pixels: np.ndarray, detector: FaceDetector, size: int, margin: float
) -> tuple[np.ndarray, dict[str, Any]]:
    """One LFW photo -> its aligned crop ``(size, size, 3)`` uint8 and a record of what happened."""
    found = face_crops(pixels, detector, size, margin, pick=centre_face)
    if found.face is None:
        h, w = pixels.shape[:2]
        eyes = LFW_EYES * np.array([w / 250.0, h / 250.0], np.float32)
        crop = warp(pixels, alignment_matrix(eyes, size, margin), size)
        return crop, {"status": "fallback", "faces": 0}
    return found.crops[0], {
        "status": "detected",
        "faces": found.detected,
        "estimated": bool(found.face.landmarks_estimated),
    }


def write_jpeg(pixels: np.ndarray, path: Path, quality: int) -> None:
    """Atomic write: temporary name in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(pixels).save(tmp, format="JPEG", quality=quality)
    os.replace(tmp, path)


def read_manifest(out: Path) -> dict[str, dict[str, Any]]:
    records: dict[str, dict[str, Any]] = {}
    path = out / MANIFEST
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
                records[rec["image"]] = rec
            except (ValueError, KeyError):
                continue  # a line cut short by an interruption
    return records


def main() -> None:
    ap = BenchParser(__doc__, workers=2, lfw_data=True)
    ap.add_argument("--detector", default="haar", choices=["haar", "dlib-hog", "dlib-cnn"])
    ap.add_argument(
        "--out", type=Path, default=None, help="output folder (default benchmarks/results/lfw-aligned-DETECTOR)"
    )
    ap.add_argument("--size", type=int, default=160, help="side of the aligned crops in pixels")
    ap.add_argument(
        "--margin", type=float, default=DEFAULT_MARGIN, help="context around the face square, as a fraction of its side"
    )
    ap.add_argument(
        "--max-side", type=int, default=160, help="detection runs on a copy this large (LFW photos are 250 px)"
    )
    ap.add_argument("--limit", type=int, default=0, help="only the first N images (0: all)")
    ap.add_argument("--quality", type=int, default=95, help="JPEG quality of the crops")
    args = ap.parse_args()
    set_threads(1, ("opencv",))

    root = args.data or require_dataset(LFW)
    out = args.out or RESULTS / f"lfw-aligned-{args.detector}"
    out.mkdir(parents=True, exist_ok=True)
    paths = sorted(root.glob("*/*.jpg"))
    if args.limit:
        paths = paths[: args.limit]
    done = read_manifest(out)
    todo = [p for p in paths if not (out / p.relative_to(root)).exists()]
    detector = lfw_detector(args.detector, args.max_side)

    counts = {"detected": 0, "fallback": 0, "several_faces": 0, "eyes_estimated": 0, "errors": 0}
    fallbacks: list[str] = []
    errors: list[list[str]] = []

    def count(rec: dict[str, Any]) -> None:
        if rec["status"] == "error":
            counts["errors"] += 1
            errors.append([rec["image"], rec.get("error", "")])
            return
        counts[rec["status"]] += 1
        counts["several_faces"] += rec.get("faces", 0) > 1
        counts["eyes_estimated"] += bool(rec.get("estimated", False))
        if rec["status"] == "fallback":
            fallbacks.append(rec["image"])

    todo_set = {str(p.relative_to(root)) for p in todo}
    for p in paths:
        rel = str(p.relative_to(root))
        if rel not in todo_set and rel in done:
            count(done[rel])
    # The library's decoder at full size (max_side None: no resize, as the crops are cut from the photo itself;
    # detection downscales its own copy to --max-side).
    images = decoded([str(p) for p in todo], None, workers=args.workers)  # type: ignore[arg-type]
    detect = Stopwatch()
    with Stopwatch() as total, open(out / MANIFEST, "a") as manifest:
        for i, item in tqdm(images, total=len(todo), unit="img", desc=args.detector):
            rel = str(todo[i].relative_to(root))
            if isinstance(item, str):
                rec: dict[str, Any] = {"image": rel, "status": "error", "error": item}
            else:
                with detect:
                    crop, rec = align_lfw(item.image.pixels, detector, args.size, args.margin)
                rec = {"image": rel, **rec}
                write_jpeg(crop, out / rel, args.quality)
            manifest.write(json.dumps(rec) + "\n")
            count(rec)
    processed = len(todo)
    summary = {
        "benchmark": "prepare_lfw_faces",
        "detector": args.detector,
        "data": str(root),
        "out": str(out),
        "images": len(paths),
        "processed_now": processed,
        "skipped_existing": len(paths) - processed,
        **counts,
        "size": args.size,
        "margin": args.margin,
        "max_side": args.max_side,
        "seconds": round(total.seconds, 1),
        "images_per_second": rate(processed, total.seconds, 1) if processed and total.seconds > 0 else None,
        "detect_align_images_per_second": rate(processed, detect.seconds, 1) if detect.seconds > 0 else None,
        "fallback_images": fallbacks,
        "error_images": errors,
        "machine": machine(),
    }
    write_json(f"prepare_lfw_faces_{args.detector}.json", summary)


if __name__ == "__main__":
    main()
