"""Speed of face enrollment, verification (1:1) and identification (1:N) on the CPU, per backend, side by side.

Protocol
--------
- Data: LFW deep-funneled photos (250x250, one person centred), ``$LOOKALIKE_SHARED_DATA/lfw/lfw-deepfunneled``.
- People: the first ``--gallery`` people (sorted by name) with at least 3 photos. Photos 1 and 2 of each are
  enrolled under their name (the gallery: ``2 x --gallery`` faces); photo 3 of the first ``--probes`` of
  them is the probe.
- Each configuration (``yunet`` + ``sface``, the default; ``haar`` detector + lookalike network on 160 px aligned
  crops; ``dlib-hog`` + dlib's ResNet descriptor when dlib is installed) runs in a fresh home with the same
  photos, in one process.
- Timed, through the public :class:`indexer.faces.FaceGallery` API (so every figure includes decoding,
  detection, alignment, embedding and the database / FAISS work):
  * enroll: ``enroll(name, [photo1, photo2])`` per person -> enrolled faces/s;
  * verify: ``verify(probe, own name)`` and ``verify(probe, another person)`` -> verifications/s (one
    probe face each);
  * identify: ``identify(probe, k=5)`` against the whole gallery -> probe faces/s;
  * identify 1:N at scale: the gallery is then padded with synthetic enrolled faces (random unit vectors, two
    per synthetic identity, written straight into the database) up to ``--enrolled`` faces (10,000), and the
    probes are identified again (the first call, which rebuilds the face index, is not timed) -> ms per probe;
  * index: ``index_folder`` on a folder of ``--index-photos`` LFW photos (links to photos 4.. of people with at
    least 4) -> faces/s end to end from files (scan, decode, detect, align, embed, commit; wall clock) and over
    the embedding stage alone (the report's ``faces_per_second``).
  The model is loaded (and warmed up on one photo) before timing.
- Quality figures from the same calls (small samples; for the LFW protocol use ``lookalike faces eval``):
  rank-1 identification rate; the genuine vs impostor verification scores -> the accuracy of the best
  threshold on them, that threshold, and the same with the ``mean`` instead of ``max`` over a person's
  enrolled faces; faces missed by the detector.

Run: ``python -m benchmarks.bench_faces_speed [--gallery 300] [--probes 100] [--enrolled 10000]
[--index-photos 300] [--configs yunet:sface,haar:lookalike,dlib-hog:dlib]``; JSON in
``benchmarks/results/faces_speed.json``. Threads: the libraries' defaults (2 on the 2-core VM); the machine is
shared, so ``loadavg`` is recorded with each configuration.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
from sqlalchemy import select

from benchmarks.common import BenchParser, machine, require_dataset, write_json
from benchmarks.shared_data import LFW, people_with_photos
from benchmarks.timing import Stopwatch, loadavg, rate
from indexer import db
from indexer.db import FaceRecord, Identity
from indexer.faces import _INDEX_FILES, ENROLLED, UNKNOWN, FaceGallery
from retrieval.config import RuntimeOptions
from retrieval.faces import dlib_available
from retrieval.verification import accuracy, best_threshold


def pad_gallery(g: FaceGallery, total: int, seed: int = 0) -> int:
    """Add synthetic enrolled faces (random unit vectors of the gallery's dimension, two per identity named
    ``synthetic-N``) until the gallery holds ``total`` enrolled faces; returns how many were added. Written
    straight into the database (no photos to embed); the face index is rebuilt at its next use."""
    with g.session() as s:  # a benchmark may reach inside: there is no API to enroll vectors
        rows = s.execute(select(FaceRecord.vector).where(FaceRecord.source == ENROLLED)).scalars().all()
    have = len(rows)
    dim = np.frombuffer(rows[0], np.float32).size
    n = max(0, total - have)
    vecs = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    with g.session() as s, s.begin():
        for start in range(0, n, 2):
            ident = Identity(name=f"synthetic-{start // 2}")
            s.add(ident)
            s.flush()
            for v in vecs[start : start + 2]:
                s.add(
                    FaceRecord(
                        source=ENROLLED,
                        path=f"synthetic/{ident.name}",
                        x0=0.0,
                        y0=0.0,
                        x1=1.0,
                        y1=1.0,
                        score=0.0,
                        vector=v.tobytes(),
                        identity_id=ident.id,
                    )
                )
        db.bump_vector_version(s, _INDEX_FILES[ENROLLED][2])
    return n


def index_photos(count: int) -> list[Path]:
    """Photos 4.. of the people with at least 4 photos (never enrolled nor probed), sorted, the first ``count``."""
    out: list[Path] = []
    for d in sorted(require_dataset(LFW).iterdir()):
        extra = sorted(d.glob("*.jpg"))[3:]
        out.extend(extra)
        if len(out) >= count:
            break
    return out[:count]


def time_index(g: FaceGallery, photos: list[Path]) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        for p in photos:
            os.symlink(p, Path(folder) / p.name)
        with Stopwatch() as clock:
            rep = g.index_folder(folder)
    return {
        "photos": rep.embedded,
        "faces": rep.faces,
        "photos_without_face": rep.without_faces,
        "skipped": len(rep.skipped),
        "index_faces_per_s_end_to_end": rate(rep.faces, clock.seconds, 2),
        "index_faces_per_s_embedding_stage": round(rep.faces_per_second, 2),
        "seconds": round(clock.seconds, 1),
    }


def run_config(
    detector: str,
    backend: str,
    people: list[tuple[str, list[Path]]],
    n_probes: int,
    runtime: RuntimeOptions,
    enrolled_target: int,
    photos_to_index: list[Path],
) -> dict:
    load_before = loadavg()
    with tempfile.TemporaryDirectory() as home:
        g = FaceGallery(home, runtime=runtime)
        g.configure(detector=detector, backend=backend)
        g.verify_pair(people[0][1][0], people[0][1][1])  # load the models, warm up
        enrolled = no_face = 0
        with Stopwatch() as t_enroll:
            for name, photos in people:
                rep = g.enroll(name, photos[:2])
                enrolled += len(rep.enrolled)
                no_face += len(rep.no_face)
        known = {p.name for p in g.identities()}
        probes = [(name, photos[2]) for name, photos in people[:n_probes] if name in known]
        rng = random.Random(0)
        others = [rng.choice([n for n in known if n != name]) for name, _ in probes]
        genuine, impostor, genuine_mean, impostor_mean = [], [], [], []
        t_verify = Stopwatch()
        n_verify = 0
        for (name, probe), other in zip(probes, others):
            with t_verify:
                d_own, d_other = g.verify(probe, name), g.verify(probe, other)
            n_verify += 2
            if d_own.score is None:
                continue
            genuine.append(d_own.score)
            impostor.append(d_other.score)
            genuine_mean.append(g.verify(probe, name, aggregate="mean").score)
            impostor_mean.append(g.verify(probe, other, aggregate="mean").score)
        rank1 = unknown = probe_no_face = 0
        with Stopwatch() as t_identify:
            for name, probe in probes:
                matches = g.identify(probe, k=5)
                if not matches:
                    probe_no_face += 1
                    continue
                top = matches[0]  # the largest face: LFW centres the named person
                rank1 += bool(top.candidates) and top.candidates[0].name == name
                unknown += top.identity == UNKNOWN
        settings = g.settings
        padded = pad_gallery(g, enrolled_target) if enrolled_target > enrolled else 0
        at_scale = Stopwatch()
        if padded:
            g.identify(probes[0][1], k=5)  # rebuilds the face index: not timed
            for _, probe in probes:
                with at_scale:
                    g.identify(probe, k=5)
        indexing = time_index(g, photos_to_index) if photos_to_index else None

    def quality(gen: list[float], imp: list[float]) -> dict:
        scores = np.array(gen + imp)
        same = np.array([True] * len(gen) + [False] * len(imp))
        thr = best_threshold(scores, same)
        return {
            "best_threshold": round(thr, 4),
            "accuracy_at_best": round(accuracy(scores, same, thr), 4),
            "accuracy_at_default": round(accuracy(scores, same, settings.threshold), 4),
            "genuine_mean_score": round(float(np.mean(gen)), 4),
            "impostor_mean_score": round(float(np.mean(imp)), 4),
        }

    return {
        "detector": detector,
        "backend": backend,
        "model": settings.describe(),
        "default_threshold": settings.threshold,
        "gallery_people": len(known),
        "gallery_faces": enrolled,
        "enrol_photos_without_face": no_face,
        "enroll_faces_per_s": rate(enrolled, t_enroll.seconds, 2),
        "verify_per_s": rate(n_verify, t_verify.seconds, 2),
        "verify_ms": round(1000 * t_verify.seconds / n_verify, 1),
        "identify_faces_per_s": rate(len(probes), t_identify.seconds, 2),
        "identify_ms": round(1000 * t_identify.seconds / len(probes), 1),
        "identify_scale_enrolled_faces": enrolled + padded if padded else None,
        "identify_scale_ms": round(1000 * at_scale.seconds / len(probes), 1) if padded else None,
        "identify_scale_ms_p50": round(1000 * float(np.median(at_scale.laps)), 1) if padded else None,
        "index": indexing,
        "loadavg_before_after": [load_before, loadavg()],
        "probes": len(probes),
        "probe_photos_without_face": probe_no_face,
        "rank1": round(rank1 / len(probes), 4),
        "identified_as_unknown": round(unknown / len(probes), 4),
        "verification_max": quality(genuine, impostor),
        "verification_mean": quality(genuine_mean, impostor_mean),
    }


def main() -> None:
    ap = BenchParser(__doc__)
    ap.add_argument("--gallery", type=int, default=300, help="people enrolled (2 photos each)")
    ap.add_argument("--probes", type=int, default=100, help="people probed (their 3rd photo)")
    ap.add_argument("--enrolled", type=int, default=10000, help="enrolled faces for the 1:N timing (0: skip)")
    ap.add_argument("--index-photos", type=int, default=300, help="photos indexed for faces/s (0: skip)")
    ap.add_argument(
        "--configs",
        default="yunet:sface,haar:lookalike,dlib-hog:dlib",
        help="detector:backend pairs, comma separated (dlib ones skipped when dlib is missing)",
    )
    args = ap.parse_args()
    people = people_with_photos(None, args.gallery, photos=3)
    runtime = RuntimeOptions(device="cpu", batch_size=32, workers=int(os.environ.get("LOOKALIKE_WORKERS", "2")))
    results = []
    for spec in args.configs.split(","):
        detector, backend = spec.split(":")
        if "dlib" in spec and not dlib_available():
            results.append({"detector": detector, "backend": backend, "skipped": "dlib is not installed"})
            continue
        photos = index_photos(args.index_photos) if args.index_photos else []
        results.append(run_config(detector, backend, people, args.probes, runtime, args.enrolled, photos))
        print(results[-1], flush=True)
    write_json(
        "faces_speed.json",
        {
            "benchmark": "faces_speed",
            "machine": machine(),
            "gallery": args.gallery,
            "probes": args.probes,
            "enrolled_for_1_to_n": args.enrolled,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
