"""Face galleries on the collection's machinery: enroll people, verify 1:1, identify 1:N, index faces in photos.

A :class:`FaceGallery` lives in the same home folder and database as the image :class:`~indexer.engine.Collection`
(tables ``identities``, ``face_photos`` and ``faces``, see :mod:`indexer.db`). Every face is a row holding its
photo, box, landmarks, detector score and unit vector; the database is the source of truth. Two FAISS indexes
are caches of it, each with its own file and version counter, written atomically and rebuilt from the
database when stale or missing: the *gallery* (enrolled faces, ``faces_enrolled.faiss``) and the *photo
faces* (every face found by :meth:`FaceGallery.index_folder`, ``faces_photos.faiss``).

Pipeline for every photo: decode (EXIF, any mode, bomb guard) -> detector (``yunet`` by default, ``haar``,
``dlib-hog``, ``dlib-cnn``) -> per face either SFace's 128-d vector of a 112 px crop aligned on the ArcFace
template (``backend="sface"``, the default), landmarks-based alignment to a ``crop_size`` square and the
lookalike network (``backend="lookalike"``), or dlib's 128-d ResNet descriptor (``backend="dlib"``) -> unit
vector. Two faces are the same person when the cosine similarity of their vectors is at least the gallery's
threshold. The threshold is either a default per backend (sface's chosen on LFW, the others' rough; every
decision says which) or calibrated by :meth:`FaceGallery.calibrate` on the user's labelled pairs at a chosen
false-accept rate.

A photo without a face is a result (reported), not an error; an unreadable file is skipped and reported
when indexing, and an error (:class:`~indexer.engine.LookalikeError`) when it is the one probe asked about.
Boxes and landmarks are stored and returned in the photo's original pixel coordinates (after EXIF rotation).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from retrieval.config import ModelConfig, RuntimeOptions
from retrieval.faces import (
    AlignedFaceEmbedder,
    Face,
    FaceDetector,
    FaceEmbedder,
    build_detector,
    centre_face,
    largest_face,
    pick_faces,
    unit_vectors,
)
from retrieval.registry import UnknownNameError

from . import db, sync
from .db import ERROR, INDEXED, PENDING, FacePhoto, FaceRecord, Identity
from .errors import LookalikeError, ModelMismatchError
from .evaluate import PairsReport, score_pairs
from .imageio import DEFAULT_MAX_PIXELS, ImageLoadError, load_image
from .index_cache import IndexCache, RowVectors
from .pipeline import decoded
from .store import IndexFile, Progress, Store, chunks, vectors_from_rows, write_lock
from .sync import BatchWriter, FileSync, IndexReport

log = logging.getLogger(__name__)

#: ``faces.source`` of an enrolled face and of a face found by ``index_folder`` (stored values: kept as they are).
ENROLLED, INDEX = "enrol", "index"
UNKNOWN = "unknown"
#: Photos are decoded at most this large (longest side) for detection and alignment.
FACE_MAX_SIDE = 1280

#: Default cosine-similarity thresholds per backend.
#: - ``sface``: calibrated on LFW View 2 with the default pipeline (yunet + sface): the mean of the 10 fold
#:   thresholds of ``lookalike faces eval pairs.txt`` (each maximising accuracy on the other 9 folds);
#:   recomputed by ``python -m benchmarks.bench_faces_lfw`` (``default_threshold_recomputed``). Measured
#:   2026-11-30: fold thresholds 0.3225-0.3233, so 0.323 (99.08% accuracy over the 10 folds; the threshold
#:   that keeps FAR at 1e-3 over all 6,000 pairs is 0.340, TAR 0.983 there).
#: - ``lookalike`` / ``dlib``: uncalibrated, about the best-accuracy threshold of genuine vs impostor
#:   verifications of 100 LFW people against 2 enrolled photos each (benchmarks/bench_faces_speed.py: 0.648 for
#:   haar + ImageNet Lite0 on 160 px crops, 76% accuracy; 0.925 for dlib-hog + dlib, 98.5%).
#: ``lookalike faces calibrate`` chooses one on the user's own labelled pairs.
DEFAULT_THRESHOLDS = {"sface": 0.323, "lookalike": 0.65, "dlib": 0.92}
#: Where each backend's default threshold comes from (said with every decision).
THRESHOLD_ORIGINS = {
    "sface": "the sface backend's default, calibrated on LFW View 2 (best accuracy, 10 folds)",
    "lookalike": "the uncalibrated default of the lookalike backend",
    "dlib": "the uncalibrated default of the dlib backend",
}
BACKENDS = ("sface", "lookalike", "dlib")
#: Backends with a fixed model of their own (no lookalike ``ModelConfig``, no crop size).
_OWN_MODEL_BACKENDS = ("sface", "dlib")

_SETTINGS_KEY = "faces"
_DIM_KEY = "faces_dim"
# source -> (index file, state file, version counter)
_INDEX_FILES = {
    ENROLLED: ("faces_enrolled.faiss", "faces_enrolled.json", "faces_enrolled_version"),
    INDEX: ("faces_photos.faiss", "faces_photos.json", "faces_photos_version"),
}

Box = tuple[float, float, float, float]


def default_face_model(crop_size: int = 160) -> ModelConfig:
    """The lookalike face model by default: the ImageNet EfficientNet-Lite0 + GeM on ``crop_size`` aligned crops."""
    return ModelConfig(image_size=crop_size)


# ---------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Calibration:
    """How a threshold was chosen: on ``pairs_file`` for a false-accept rate of at most ``far_target``; the
    ``tar`` / ``far`` it achieved there, over ``same`` + ``different`` usable pairs."""

    pairs_file: str
    far_target: float
    threshold: float
    tar: float
    far: float
    same: int
    different: int


@dataclass(frozen=True)
class FaceSettings:
    """What makes a gallery's vectors (detector, backend, model, crop size) and how it decides.

    ``model`` is the lookalike network (``None`` with the sface and dlib backends); its ``image_size`` is the
    crop size. ``threshold``: cosine similarity at or above which two faces are the same person; ``None`` takes
    the backend's default (:data:`DEFAULT_THRESHOLDS`). ``calibration`` says how a threshold was calibrated
    on the user's pairs. Galleries keep the settings stored with them; these defaults apply to new ones.
    """

    detector: str = "yunet"
    backend: str = "sface"
    model: ModelConfig | None = None
    crop_size: int = 160
    threshold: float | None = None
    calibration: Calibration | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown face backend {self.backend!r}; known: {', '.join(BACKENDS)}")
        if self.crop_size < 32:
            raise ValueError(f"crop_size must be at least 32, got {self.crop_size}")
        if self.backend in _OWN_MODEL_BACKENDS:
            object.__setattr__(self, "model", None)
        else:
            model = self.model or default_face_model(self.crop_size)
            if model.image_size != self.crop_size:  # the aligned crop is the network's input
                model = dataclasses.replace(model, image_size=self.crop_size)
            object.__setattr__(self, "model", model)
        if self.threshold is None:
            object.__setattr__(self, "threshold", DEFAULT_THRESHOLDS[self.backend])

    @property
    def calibrated(self) -> bool:
        return self.calibration is not None

    def embedding_key(self) -> tuple:
        """Equal keys give interchangeable vectors."""
        return (self.detector, self.backend, self.model, self.crop_size if self.backend == "lookalike" else None)

    def uncalibrated(self) -> FaceSettings:
        return dataclasses.replace(self, threshold=None, calibration=None)

    def describe(self) -> str:
        if self.backend == "dlib":
            return f"{self.detector} detector + dlib ResNet 128-d descriptor"
        if self.backend == "sface":
            return f"{self.detector} detector + SFace 128-d (112 px crops aligned on the ArcFace template)"
        assert self.model is not None
        return f"{self.detector} detector + {self.crop_size} px aligned crops + {self.model.describe()}"

    def describe_threshold(self) -> str:
        c = self.calibration
        if c is None:
            origin = (
                THRESHOLD_ORIGINS[self.backend]
                if self.threshold == DEFAULT_THRESHOLDS[self.backend]
                else "set without calibration"
            )
            return (
                f"threshold {self.threshold:.4f} is {origin}; run `lookalike faces calibrate PAIRS --root DIR` "
                "to set one on your own labelled pairs for a chosen false-accept rate"
            )
        return (
            f"threshold {self.threshold:.4f} calibrated on {c.pairs_file} for FAR <= {c.far_target:g} "
            f"(TAR {c.tar:.4f} at FAR {c.far:.4f} over {c.same} same / {c.different} different pairs)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "detector": self.detector,
            "backend": self.backend,
            "model": None if self.model is None else self.model.to_dict(),
            "crop_size": self.crop_size,
            "threshold": self.threshold,
            "calibration": None if self.calibration is None else dataclasses.asdict(self.calibration),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FaceSettings:
        return cls(
            detector=d["detector"],
            backend=d["backend"],
            model=None if d.get("model") is None else ModelConfig.from_dict(d["model"]),
            crop_size=d["crop_size"],
            threshold=d.get("threshold"),
            calibration=None if d.get("calibration") is None else Calibration(**d["calibration"]),
        )


# ---------------------------------------------------------------------------------------------- embedders
DetectorFactory = Callable[[str], FaceDetector]
FaceEmbedderFactory = Callable[[FaceSettings, RuntimeOptions], FaceEmbedder]


def default_face_embedder(settings: FaceSettings, runtime: RuntimeOptions) -> FaceEmbedder:
    """The embedder ``settings`` name: SFace (:class:`~retrieval.faces.SFaceEmbedder`), :class:`AlignedFaceEmbedder`
    over the lookalike network, or dlib's."""
    if settings.backend == "sface":
        from retrieval.faces import SFaceEmbedder

        return SFaceEmbedder()
    if settings.backend == "dlib":
        from retrieval.faces import DlibFaceEncoder

        return DlibFaceEncoder()
    from retrieval.model import Embedder

    assert settings.model is not None
    return AlignedFaceEmbedder(Embedder(settings.model, runtime), settings.crop_size)


# ---------------------------------------------------------------------------------------------- results
@dataclass
class Decision:
    """A 1:1 verdict. ``score``: cosine similarity (``None`` when a photo held no face: ``same`` is then
    false and ``reason`` says why). ``box``: the probe face used (original pixels); ``other_box``: the
    second photo's face (:meth:`FaceGallery.verify_pair`). ``note``: how the threshold was set."""

    same: bool
    score: float | None
    threshold: float
    calibrated: bool
    box: Box | None = None
    other_box: Box | None = None
    name: str | None = None
    faces: int = 0
    reason: str | None = None
    note: str = ""


@dataclass
class EnrollReport:
    name: str
    enrolled: list[tuple[str, Box]] = field(default_factory=list)
    #: photos in which no face was found
    no_face: list[str] = field(default_factory=list)
    #: photos with several faces: (path, count); the largest was enrolled
    several_faces: list[tuple[str, int]] = field(default_factory=list)
    #: photos already enrolled for this person (same content)
    duplicates: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    total_faces: int = 0


@dataclass
class Candidate:
    name: str
    score: float


@dataclass
class FaceMatch:
    """One face of an identification probe: its box, the best identities (best first) and the verdict:
    the best identity's name when its score reaches the threshold, else ``"unknown"``."""

    box: Box
    identity: str
    score: float | None
    candidates: list[Candidate] = field(default_factory=list)


@dataclass
class FaceHit:
    id: int
    path: str
    box: Box
    score: float
    identity: str | None = None


@dataclass
class FaceQuery:
    """One face of a :meth:`FaceGallery.search_faces` query and the most similar indexed faces."""

    box: Box
    hits: list[FaceHit] = field(default_factory=list)


@dataclass
class FaceIndexReport(IndexReport):
    """:class:`~indexer.engine.IndexReport` of a face indexing run; ``embedded`` counts photos processed."""

    faces: int = 0
    without_faces: int = 0

    @property
    def faces_per_second(self) -> float:
        return self.faces / self.embed_seconds if self.embed_seconds > 0 else 0.0


@dataclass
class CalibrationReport:
    settings: FaceSettings
    pairs: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    #: set when the pairs are too few to measure the FAR asked for
    warning: str | None = None


@dataclass
class IdentitySummary:
    name: str
    faces: int
    added_at: Any = None


@dataclass
class _Probe:
    """A decoded photo's faces: boxes in original pixels, ``(N, D)`` vectors."""

    faces: list[Face]
    boxes: list[Box]
    vectors: np.ndarray
    content_hash: str
    width: int
    height: int
    #: original pixels per detection pixel
    scale: float = 1.0
    #: faces the detector found (``faces`` may keep only the largest)
    detected: int = 0


# ---------------------------------------------------------------------------------------------- gallery
class FaceGallery(Store):
    """Faces of people (enrolled by name) and faces found in photos, kept with a collection.

    ``detector_factory(name)`` builds the face detector, ``face_embedder_factory(settings, runtime)`` the
    face embedder; both are built lazily, and tests pass fakes.
    """

    def __init__(
        self,
        home: str | Path | None = None,
        db_url: str | None = None,
        runtime: RuntimeOptions | None = None,
        detector_factory: DetectorFactory = build_detector,
        face_embedder_factory: FaceEmbedderFactory = default_face_embedder,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        commit_every: int = 64,
        create: bool = True,
    ) -> None:
        super().__init__(home, db_url, runtime, max_pixels, commit_every, create)
        self._detector_factory = detector_factory
        self._embedder_factory = face_embedder_factory
        self._detector: tuple[str, FaceDetector] | None = None
        self._embedder: tuple[tuple, FaceEmbedder] | None = None
        self._caches = {
            src: IndexCache(
                self,
                IndexFile(self.home, f, st),
                key,
                RowVectors(FaceRecord, (FaceRecord.source == src, FaceRecord.vector.is_not(None)), _DIM_KEY),
                name=f"face index ({src})",
            )
            for src, (f, st, key) in _INDEX_FILES.items()
        }
        self._sync = FileSync(FacePhoto, _INDEX_FILES[INDEX][2], reset=dict(faces=None), dependents=_PhotoFaces())
        self._dim_known: int | None = None

    # ------------------------------------------------------------------ settings
    @property
    def settings(self) -> FaceSettings:
        with self.session() as s:
            d = db.get_setting(s, _SETTINGS_KEY)
        return FaceSettings() if d is None else FaceSettings.from_dict(d)

    def configure(
        self,
        detector: str | None = None,
        backend: str | None = None,
        model: ModelConfig | None = None,
        crop_size: int | None = None,
        reembed: bool = False,
    ) -> list[tuple[str, str]]:
        """Change the detector / backend / model / crop size (``None``: keep; a ``model`` implies the lookalike
        backend). A change that alters the vectors
        while faces are stored is refused with :class:`ModelMismatchError` unless ``reembed``: then enrolled
        faces are re-embedded from their photos and indexed photos are re-processed at the next
        :meth:`index_folder`. Any such change drops the calibration. Returns ``(path, reason)`` of enrolled
        faces that could not be re-embedded (and were dropped)."""
        current = self.settings
        changes: dict[str, Any] = {
            k: v
            for k, v in dict(detector=detector, backend=backend, model=model, crop_size=crop_size).items()
            if v is not None
        }
        if model is not None and crop_size is None:
            changes["crop_size"] = model.image_size  # the model's input size is the crop's
        if model is not None and backend is None:
            changes["backend"] = "lookalike"  # a lookalike network is only used by the lookalike backend
        if backend is not None and backend != current.backend and model is None:
            changes["model"] = None  # the new backend's default
        from retrieval.faces import DETECTORS

        if detector is not None and detector not in DETECTORS:
            raise LookalikeError(f"unknown face detector {detector!r}; known: {', '.join(DETECTORS.names())}")
        try:
            new = dataclasses.replace(current, **changes)
        except ValueError as exc:
            raise LookalikeError(str(exc)) from None
        if new.embedding_key() == current.embedding_key():
            self._store_settings(new)
            return []
        new = new.uncalibrated()
        lost: list[tuple[str, str]] = []
        with write_lock(self):
            with self.session() as s:
                stored = s.scalar(select(func.count()).select_from(FaceRecord)) or 0
            if stored and not reembed:
                raise ModelMismatchError(
                    f"the face gallery in {self.home} was embedded with {current.describe()}, not {new.describe()}; "
                    f"re-run with --reembed to re-embed its {stored} faces, or use another --home"
                )
            self._store_settings(new)
            if stored:
                lost = self._reembed_all()
        return lost

    def _store_settings(self, settings: FaceSettings) -> None:
        with self.session() as s, s.begin():
            db.set_setting(s, _SETTINGS_KEY, settings.to_dict())

    def _ensure_settings(self) -> FaceSettings:
        with self.session() as s, s.begin():
            d = db.get_setting(s, _SETTINGS_KEY)
            if d is None:
                db.set_setting(s, _SETTINGS_KEY, FaceSettings().to_dict())
                return FaceSettings()
        return FaceSettings.from_dict(d)

    def _get_detector(self, settings: FaceSettings) -> FaceDetector:
        if self._detector is None or self._detector[0] != settings.detector:
            try:
                self._detector = (settings.detector, self._detector_factory(settings.detector))
            except (UnknownNameError, RuntimeError, OSError, ValueError) as exc:
                raise LookalikeError(f"cannot build the face detector {settings.detector!r}: {exc}") from None
        return self._detector[1]

    def _get_embedder(self, settings: FaceSettings) -> FaceEmbedder:
        key = settings.embedding_key()
        if self._embedder is None or self._embedder[0] != key:
            try:
                self._embedder = (key, self._embedder_factory(settings, self.runtime))
            except (UnknownNameError, RuntimeError, OSError, ValueError) as exc:
                raise LookalikeError(f"cannot build the {settings.backend} face embedder: {exc}") from None
        return self._embedder[1]

    # ------------------------------------------------------------------ photos -> faces
    def _read(self, path: str) -> np.ndarray | str:
        try:
            return load_image(path, None, self.max_pixels)
        except ImageLoadError as exc:
            return exc.reason

    def _probe(self, loaded: Any, settings: FaceSettings, largest_only: bool = False, centre: bool = False) -> _Probe:
        """Detect and embed the faces of a decoded photo (``LoadedImage``)."""
        pixels = loaded.pixels
        h, w = pixels.shape[:2]
        scale = min(1.0, FACE_MAX_SIDE / max(h, w))
        if scale < 1.0:
            pixels = cv2.resize(
                pixels, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
            )
        try:
            found = self._get_detector(settings).detect(pixels)
            detected = len(found)
            pick = centre_face if centre else largest_face if largest_only else None
            faces = pick_faces(found, pixels.shape[1], pixels.shape[0], pick)
            vecs = self._get_embedder(settings).embed(pixels, faces) if faces else np.zeros((0, 0), np.float32)
        except (ValueError, cv2.error) as exc:  # a photo the detector cannot take
            raise LookalikeError(f"face detection failed ({exc})") from None
        back = loaded.width / pixels.shape[1]
        boxes = [tuple(float(v) * back for v in f.box) for f in faces]
        self._remember_dim(vecs)
        return _Probe(
            faces,
            boxes,
            unit_vectors(vecs) if len(faces) else vecs,
            loaded.content_hash,
            loaded.width,
            loaded.height,
            back,
            detected,
        )

    def _remember_dim(self, vecs: np.ndarray) -> None:
        if vecs.size and self._dim_known != vecs.shape[1]:
            with self.session() as s, s.begin():
                db.set_setting(s, _DIM_KEY, int(vecs.shape[1]))
            self._dim_known = vecs.shape[1]

    def _try_probe(
        self, loaded: Any, settings: FaceSettings, largest_only: bool = False, centre: bool = False
    ) -> _Probe | str:
        """:meth:`_probe`, or the reason it failed (a photo the detector cannot take)."""
        try:
            return self._probe(loaded, settings, largest_only, centre)
        except LookalikeError as exc:
            return str(exc)

    def _probe_path(self, image: str | Path, settings: FaceSettings, largest_only: bool = False) -> _Probe:
        path = str(Path(image).expanduser())
        loaded = self._read(path)
        probe = loaded if isinstance(loaded, str) else self._try_probe(loaded, settings, largest_only)
        if isinstance(probe, str):
            raise LookalikeError(f"cannot read {path}: {probe}")
        return probe

    @staticmethod
    def _face_row(probe: _Probe, i: int, path: str, source: str, **extra: Any) -> FaceRecord:
        face = probe.faces[i]
        marks = None if face.landmarks is None else json.dumps((face.landmarks * probe.scale).round(2).tolist())
        return FaceRecord(
            source=source,
            path=path,
            content_hash=probe.content_hash,
            x0=probe.boxes[i][0],
            y0=probe.boxes[i][1],
            x1=probe.boxes[i][2],
            y1=probe.boxes[i][3],
            landmarks=marks,
            score=float(face.score),
            vector=probe.vectors[i].astype(np.float32).tobytes(),
            **extra,
        )

    # ------------------------------------------------------------------ enrollment
    def enroll(self, name: str, images: Iterable[str | Path]) -> EnrollReport:
        """Enroll ``name`` from photos (the largest face of each). Photos without a face, unreadable ones and
        photos already enrolled for ``name`` are reported, not errors. Creates the identity when new."""
        name = name.strip()
        if not name:
            raise LookalikeError("an identity needs a non-empty name")
        if name == UNKNOWN:
            raise LookalikeError(f"{UNKNOWN!r} is reserved for faces that match nobody; choose another name")
        report = EnrollReport(name=name)
        settings = self._ensure_settings()
        with write_lock(self):
            start = self._caches[ENROLLED].version()
            with self.session() as s, s.begin():
                ident = s.scalar(select(Identity).where(Identity.name == name))
                if ident is None:
                    ident = Identity(name=name)
                    s.add(ident)
                    s.flush()
                known = set(s.scalars(select(FaceRecord.content_hash).where(FaceRecord.identity_id == ident.id)))
                ident_id = ident.id
            added: set[int] = set()
            for image in images:
                path = str(Path(image).expanduser().resolve())
                loaded = self._read(path)
                if isinstance(loaded, str):
                    report.skipped.append((path, loaded))
                    continue
                if loaded.content_hash in known:
                    report.duplicates.append(path)
                    continue
                probe = self._try_probe(loaded, settings)
                if isinstance(probe, str):
                    report.skipped.append((path, probe))
                    continue
                if not probe.faces:
                    report.no_face.append(path)
                    continue
                if len(probe.faces) > 1:
                    report.several_faces.append((path, len(probe.faces)))
                best = probe.faces.index(largest_face(probe.faces))
                with self.session() as s, s.begin():
                    row = self._face_row(probe, best, path, ENROLLED, identity_id=ident_id)
                    s.add(row)
                    s.flush()
                    added.add(row.id)
                    db.bump_vector_version(s, _INDEX_FILES[ENROLLED][2])
                known.add(loaded.content_hash)
                report.enrolled.append((path, probe.boxes[best]))
            with self.session() as s, s.begin():
                report.total_faces = s.scalar(select(func.count()).where(FaceRecord.identity_id == ident_id)) or 0
                if report.total_faces == 0:  # nothing usable: do not keep an empty identity
                    s.execute(delete(Identity).where(Identity.id == ident_id))
            self._caches[ENROLLED].update(start, added, set())
        return report

    def forget(self, name: str) -> int:
        """Remove an identity and its enrolled faces. Returns the number of faces removed."""
        with write_lock(self):
            start = self._caches[ENROLLED].version()
            with self.session() as s, s.begin():
                ident = s.scalar(select(Identity).where(Identity.name == name))
                if ident is None:
                    raise LookalikeError(self._unknown_name(s, name))
                ids = set(s.scalars(select(FaceRecord.id).where(FaceRecord.identity_id == ident.id)))
                s.execute(delete(FaceRecord).where(FaceRecord.identity_id == ident.id))
                s.execute(delete(Identity).where(Identity.id == ident.id))
                # a face cluster named so is unnamed again (indexer/face_clusters.py)
                s.execute(update(db.FaceCluster).where(db.FaceCluster.identity_id == ident.id).values(identity_id=None))
                db.bump_vector_version(s, _INDEX_FILES[ENROLLED][2])
            self._caches[ENROLLED].update(start, set(), ids)
        return len(ids)

    def enroll_indexed_faces(self, name: str, face_ids: Iterable[int]) -> tuple[int, int]:
        """Enroll ``name`` from faces found by :meth:`index_folder` (a named cluster, :mod:`indexer.face_clusters`):
        afterwards ``name``'s enrolled copies of indexed faces are exactly copies of ``face_ids`` (same photo, box,
        landmarks and vector); faces enrolled from photos stay. The identity is created when needed and removed
        when left without a face. Returns ``(added, removed)``."""
        name = name.strip()
        if not name or name == UNKNOWN:
            raise LookalikeError(f"a person needs a non-empty name other than {UNKNOWN!r}")
        wanted = set(face_ids)
        with write_lock(self):
            start = self._caches[ENROLLED].version()
            with self.session() as s, s.begin():
                ident = s.scalar(select(Identity).where(Identity.name == name))
                if ident is None:
                    if not wanted:
                        return 0, 0
                    ident = Identity(name=name)
                    s.add(ident)
                    s.flush()
                copies = s.execute(
                    select(FaceRecord.from_face_id, FaceRecord.id).where(
                        FaceRecord.identity_id == ident.id, FaceRecord.from_face_id.is_not(None)
                    )
                )
                have = {int(f): int(i) for f, i in copies}
                gone = {have[f] for f in set(have) - wanted}
                rows = []
                for chunk in chunks(sorted(wanted - set(have)), 500):
                    for r in s.scalars(select(FaceRecord).where(FaceRecord.id.in_(chunk), FaceRecord.source == INDEX)):
                        rows.append(
                            FaceRecord(
                                source=ENROLLED,
                                identity_id=ident.id,
                                from_face_id=r.id,
                                path=r.path,
                                content_hash=r.content_hash,
                                x0=r.x0,
                                y0=r.y0,
                                x1=r.x1,
                                y1=r.y1,
                                landmarks=r.landmarks,
                                score=r.score,
                                vector=r.vector,
                            )
                        )
                s.add_all(rows)
                for chunk in chunks(sorted(gone), 500):
                    s.execute(delete(FaceRecord).where(FaceRecord.id.in_(chunk)))
                s.flush()
                added = {r.id for r in rows}
                if added or gone:
                    db.bump_vector_version(s, _INDEX_FILES[ENROLLED][2])
                if not s.scalar(select(func.count()).where(FaceRecord.identity_id == ident.id)):
                    s.execute(delete(Identity).where(Identity.id == ident.id))
                    s.execute(
                        update(db.FaceCluster).where(db.FaceCluster.identity_id == ident.id).values(identity_id=None)
                    )
            self._caches[ENROLLED].update(start, added, gone)
        return len(added), len(gone)

    def identities(self) -> list[IdentitySummary]:
        with self.session() as s:
            rows = s.execute(
                select(Identity.name, func.count(FaceRecord.id), Identity.added_at)
                .outerjoin(FaceRecord, FaceRecord.identity_id == Identity.id)
                .group_by(Identity.id)
                .order_by(Identity.name)
            ).all()
        return [IdentitySummary(n, c, a) for n, c, a in rows]

    def _unknown_name(self, s: Session, name: str) -> str:
        names = list(s.scalars(select(Identity.name).order_by(Identity.name).limit(10)))
        known = (
            f"; enrolled: {', '.join(names)}"
            if names
            else "; nobody is enrolled yet (lookalike faces enroll NAME IMAGE...)"
        )
        return f"no identity named {name!r}{known}"

    # ------------------------------------------------------------------ 1:1
    def _decision(self, settings: FaceSettings, score: float | None, **kw: Any) -> Decision:
        same = score is not None and score >= settings.threshold
        return Decision(
            same=same,
            score=score,
            threshold=float(settings.threshold),
            calibrated=settings.calibrated,
            note=settings.describe_threshold(),
            **kw,
        )

    def verify(self, image: str | Path, name: str, aggregate: str = "max") -> Decision:
        """Is the person in ``image`` (its largest face) ``name``? The score is the ``max`` (default) or
        ``mean`` cosine similarity to ``name``'s enrolled faces."""
        if aggregate not in ("max", "mean"):
            raise LookalikeError(f"aggregate must be 'max' or 'mean', got {aggregate!r}")
        settings = self.settings
        with self.session() as s:
            ident = s.scalar(select(Identity).where(Identity.name == name))
            if ident is None:
                raise LookalikeError(self._unknown_name(s, name))
            _, gallery = vectors_from_rows(
                list(s.execute(select(FaceRecord.id, FaceRecord.vector).where(FaceRecord.identity_id == ident.id)))
            )
        probe = self._probe_path(image, settings, largest_only=True)
        if not probe.faces:
            return self._decision(settings, None, name=name, reason=f"no face found in {image}")
        if gallery.shape[0] == 0:
            raise LookalikeError(f"{name!r} has no enrolled faces; enroll photos first")
        if gallery.shape[1] != probe.vectors.shape[1]:
            raise LookalikeError("the enrolled faces were made by another model; re-embed (faces index --reembed)")
        sims = gallery @ probe.vectors[0]
        score = float(sims.max() if aggregate == "max" else sims.mean())
        return self._decision(settings, score, name=name, box=probe.boxes[0], faces=probe.detected)

    def verify_pair(self, a: str | Path, b: str | Path) -> Decision:
        """Are the largest faces of photos ``a`` and ``b`` the same person?"""
        settings = self.settings
        pa, pb = self._probe_path(a, settings, True), self._probe_path(b, settings, True)
        missing = [str(p) for p, probe in ((a, pa), (b, pb)) if not probe.faces]
        boxes = dict(
            box=pa.boxes[0] if pa.faces else None, other_box=pb.boxes[0] if pb.faces else None, faces=pa.detected
        )
        if missing:
            return self._decision(settings, None, reason="no face found in " + " and ".join(missing), **boxes)
        return self._decision(settings, float(pa.vectors[0] @ pb.vectors[0]), **boxes)

    # ------------------------------------------------------------------ 1:N
    def identify(self, image: str | Path, k: int = 5) -> list[FaceMatch]:
        """For every face in ``image`` (largest first): the ``k`` enrolled identities most like it (an
        identity scores its best enrolled face), and the verdict (``"unknown"`` below the threshold).
        A photo without faces gives ``[]``."""
        settings = self.settings
        probe = self._probe_path(image, settings)
        if not probe.faces:
            return []
        per_face = self._search(ENROLLED, probe.vectors, max(8 * k, 64))  # several faces per identity
        with self.session() as s:
            owner = self._owners(s, {i for r in per_face for i, _ in r})
        out: list[FaceMatch] = []
        for box, results in zip(probe.boxes, per_face):
            best: dict[str, float] = {}
            for face_id, score in results:
                who = owner.get(face_id)
                if who is not None and score > best.get(who, -2.0):
                    best[who] = score
            ranked = sorted(best.items(), key=lambda t: -t[1])[:k]
            cands = [Candidate(n, sc) for n, sc in ranked]
            top = cands[0] if cands else None
            verdict = top.name if top is not None and top.score >= settings.threshold else UNKNOWN
            out.append(FaceMatch(box=box, identity=verdict, score=top.score if top else None, candidates=cands))
        return out

    def _owners(self, s: Session, face_ids: set[int]) -> dict[int, str]:
        owner: dict[int, str] = {}
        for chunk in chunks(sorted(face_ids), 500):
            owner.update(
                (r[0], r[1])
                for r in s.execute(
                    select(FaceRecord.id, Identity.name)
                    .join(Identity, FaceRecord.identity_id == Identity.id)
                    .where(FaceRecord.id.in_(chunk))
                )
            )
        return owner

    def search_faces(self, image: str | Path, k: int = 10) -> list[FaceQuery]:
        """For every face in ``image``: the ``k`` faces of indexed photos most like it, best first."""
        settings = self.settings
        probe = self._probe_path(image, settings)
        if not probe.faces:
            return []
        per_face = self._search(INDEX, probe.vectors, k)
        wanted = sorted({i for r in per_face for i, _ in r})
        rows: dict[int, Any] = {}
        with self.session() as s:
            for chunk in chunks(wanted, 500):
                for r in s.execute(
                    select(
                        FaceRecord.id, FaceRecord.path, FaceRecord.x0, FaceRecord.y0, FaceRecord.x1, FaceRecord.y1
                    ).where(FaceRecord.id.in_(chunk))
                ):
                    rows[r[0]] = r
        return [
            FaceQuery(box=box, hits=[FaceHit(i, rows[i][1], tuple(rows[i][2:6]), sc) for i, sc in results if i in rows])
            for box, results in zip(probe.boxes, per_face)
        ]

    def _search(self, source: str, vectors: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        index = self._caches[source].current()
        if len(index) == 0:
            return [[] for _ in range(len(vectors))]
        if index.dim != vectors.shape[1]:
            raise LookalikeError(
                f"the face index holds {index.dim}-d vectors but the face model makes "
                f"{vectors.shape[1]}-d ones; re-embed with --reembed"
            )
        scores, ids = index.search(np.ascontiguousarray(vectors, np.float32), min(k, len(index)))
        return [[(int(i), float(sc)) for sc, i in zip(srow, irow) if i >= 0] for srow, irow in zip(scores, ids)]

    # ------------------------------------------------------------------ folders
    def index_folder(self, folder: str | Path, progress: Progress | None = None) -> FaceIndexReport:
        """Find and embed every face of every photo under ``folder``. Incremental, as
        :meth:`Collection.index_folder <indexer.engine.Collection.index_folder>`: unchanged photos are not
        read again, moved ones are followed, deleted ones dropped; corrupt files are skipped and reported."""
        report = FaceIndexReport(folder=str(folder))
        process = functools.partial(self._process_photos, self._ensure_settings())
        sync.index_folder(self, folder, report, self._sync, self._caches[INDEX], process, progress, description="faces")
        return report

    def _process_photos(
        self, settings: FaceSettings, todo: list[tuple[int, str]], report: IndexReport, writer: BatchWriter
    ) -> None:
        """Detect and embed the faces of the pending photos; ``report`` is a :class:`FaceIndexReport`."""
        assert isinstance(report, FaceIndexReport)
        self._get_detector(settings), self._get_embedder(settings)  # fail before reading anything
        # max_side None: decoded at full size; _probe shrinks large photos to FACE_MAX_SIDE.
        for i, item in decoded(
            [p for _, p in todo],
            None,
            workers=self.runtime.workers,  # type: ignore[arg-type]
            max_pixels=self.max_pixels,
        ):
            pid, path = todo[i]
            probe = item if isinstance(item, str) else self._try_probe(item.image, settings)
            if isinstance(probe, str):
                writer.put(dict(id=pid, status=ERROR, error=probe, faces=None))
                report.skipped.append((path, probe))
                continue
            rows = [self._face_row(probe, j, path, INDEX, photo_id=pid) for j in range(len(probe.faces))]
            writer.put(
                dict(
                    id=pid,
                    status=INDEXED,
                    error=None,
                    faces=len(rows),
                    content_hash=probe.content_hash,
                    width=probe.width,
                    height=probe.height,
                ),
                rows,
            )
            report.embedded += 1
            report.faces += len(rows)
            report.without_faces += not rows

    def _reembed_all(self) -> list[tuple[str, str]]:
        """After a model change: re-embed enrolled faces from their photos (the face nearest the stored box),
        drop the indexed photos' faces and mark those photos for the next :meth:`index_folder`."""
        settings = self.settings
        lost: list[tuple[str, str]] = []
        with self.session() as s:
            enrolled = list(
                s.execute(
                    select(
                        FaceRecord.id, FaceRecord.path, FaceRecord.x0, FaceRecord.y0, FaceRecord.x1, FaceRecord.y1
                    ).where(FaceRecord.source == ENROLLED)
                )
            )
        updates, gone = [], []
        for face_id, path, *box in enrolled:
            loaded = self._read(path)
            probe = loaded if isinstance(loaded, str) else self._try_probe(loaded, settings)
            if isinstance(probe, str):
                lost.append((path, probe))
                gone.append(face_id)
                continue
            if not probe.faces:
                lost.append((path, f"the {settings.detector} detector finds no face there"))
                gone.append(face_id)
                continue
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            j = min(
                range(len(probe.boxes)),
                key=lambda i: (
                    ((probe.boxes[i][0] + probe.boxes[i][2]) / 2 - cx) ** 2
                    + ((probe.boxes[i][1] + probe.boxes[i][3]) / 2 - cy) ** 2
                ),
            )
            row = self._face_row(probe, j, path, ENROLLED)
            updates.append(
                dict(
                    id=face_id,
                    x0=row.x0,
                    y0=row.y0,
                    x1=row.x1,
                    y1=row.y1,
                    landmarks=row.landmarks,
                    score=row.score,
                    vector=row.vector,
                    content_hash=row.content_hash,
                )
            )
        with self.session() as s, s.begin():
            if updates:
                s.execute(update(FaceRecord), updates)
            for chunk in chunks(gone, 500):
                s.execute(delete(FaceRecord).where(FaceRecord.id.in_(chunk)))
            s.execute(delete(FaceRecord).where(FaceRecord.source == INDEX))
            s.execute(update(FacePhoto).values(status=PENDING, size=-1, faces=None))
            db.set_setting(s, _DIM_KEY, None)
            for src in (ENROLLED, INDEX):
                db.bump_vector_version(s, _INDEX_FILES[src][2])
        self._dim_known = None
        for cache in self._caches.values():
            cache.update(0, set(), set(), rebuild=True)
        return lost

    # ------------------------------------------------------------------ pairs files
    def _embed_pairs(
        self, pairs_file: str | Path, image_root: str | Path
    ) -> tuple[list, dict[str, np.ndarray], list[tuple[str, str]]]:
        """The face nearest the centre of every image of a pairs file: ``(pairs, path -> vector, skipped)``."""
        from retrieval.verification import read_pairs_file

        try:
            pairs = read_pairs_file(pairs_file, image_root)
        except (OSError, ValueError) as exc:
            raise LookalikeError(f"cannot read the pairs file: {exc}") from None
        settings = self.settings
        paths = sorted({p.a for p in pairs} | {p.b for p in pairs})
        vectors: dict[str, np.ndarray] = {}
        skipped: list[tuple[str, str]] = []
        for i, item in decoded(paths, None, workers=self.runtime.workers, max_pixels=self.max_pixels):  # type: ignore[arg-type]
            # the face nearest the photo's centre: a pairs file names the person each photo is framed on (LFW's
            # convention; on LFW View 2 it changes the pick in 20 of 7,701 photos: 99.42% against 99.08%)
            probe = item if isinstance(item, str) else self._try_probe(item.image, settings, centre=True)
            if isinstance(probe, str):
                skipped.append((paths[i], probe))
            elif probe.faces:
                vectors[paths[i]] = probe.vectors[0]
            else:
                skipped.append((paths[i], "no face found"))
        return pairs, vectors, skipped

    def calibrate(self, pairs_file: str | Path, image_root: str | Path, far: float = 1e-3) -> CalibrationReport:
        """Set the threshold to the lowest score whose false-accept rate on the pairs file's different-person
        pairs is at most ``far`` (the highest TAR there), and store it with the TAR / FAR it achieved. Each
        photo is scored by the face nearest its centre. Pairs with an unreadable image or no face are left out
        and reported."""
        from retrieval.verification import tar_at_far

        if not 0.0 < far < 1.0:
            raise LookalikeError(f"the false-accept rate must lie between 0 and 1, got {far}")
        pairs, vectors, skipped = self._embed_pairs(pairs_file, image_root)
        usable = [p for p in pairs if p.a in vectors and p.b in vectors]
        same = np.array([p.same for p in usable], bool)
        if same.all() or not same.any():
            raise LookalikeError(
                f"calibration needs both same-person and different-person pairs with a face in "
                f"each photo; {pairs_file} has {int(same.sum())} and {int((~same).sum())}"
            )
        scores = np.array([float(vectors[p.a] @ vectors[p.b]) for p in usable])
        tar, threshold = tar_at_far(scores, same, far)
        if not np.isfinite(threshold):
            raise LookalikeError(
                f"no threshold keeps the false-accept rate at or below {far:g} on these pairs "
                "(a different-person pair scores above every same-person pair); use more pairs"
            )
        achieved = float(np.mean(scores[~same] >= threshold))
        n_diff = int((~same).sum())
        warning = None
        if n_diff * far < 1.0:
            warning = (
                f"only {n_diff} different-person pairs: a FAR of {far:g} cannot be measured below "
                f"1/{n_diff} = {1 / n_diff:.2g}; the threshold is the strictest these pairs support"
            )
        cal = Calibration(
            pairs_file=str(Path(pairs_file).expanduser().resolve()),
            far_target=float(far),
            threshold=float(threshold),
            tar=float(tar),
            far=achieved,
            same=int(same.sum()),
            different=n_diff,
        )
        new = dataclasses.replace(self.settings, threshold=float(threshold), calibration=cal)
        self._store_settings(new)
        return CalibrationReport(settings=new, pairs=len(usable), skipped=skipped, warning=warning)

    def evaluate(self, pairs_file: str | Path, image_root: str | Path) -> PairsReport:
        """The LFW protocol on a pairs file with the gallery's face pipeline: k-fold accuracy, ROC AUC,
        TAR@FAR (:func:`indexer.evaluate.score_pairs`, as ``lookalike eval --pairs``), each photo scored by
        the face nearest its centre (as :meth:`calibrate`). Images that cannot be read or hold no face are left
        out, with their pairs, and listed in ``skipped``."""
        pairs, vectors, skipped = self._embed_pairs(pairs_file, image_root)
        try:
            metrics, n = score_pairs(pairs, vectors)
        except ValueError as exc:
            raise LookalikeError(f"cannot score {pairs_file}: {exc}") from None
        return PairsReport(metrics=metrics, pairs=n, images=len(vectors), skipped=skipped)

    # ------------------------------------------------------------------ counts
    def stats(self) -> dict[str, Any]:
        """Counts and settings, JSON-ready."""
        settings = self.settings
        with self.session() as s:
            counts = {
                r[0]: r[1] for r in s.execute(select(FaceRecord.source, func.count()).group_by(FaceRecord.source))
            }
            photos = {r[0]: r[1] for r in s.execute(select(FacePhoto.status, func.count()).group_by(FacePhoto.status))}
            people = s.scalar(select(func.count()).select_from(Identity)) or 0
        return {
            "home": str(self.home),
            "model": settings.describe(),
            "threshold": settings.threshold,
            "calibrated": settings.calibrated,
            "threshold_note": settings.describe_threshold(),
            "identities": people,
            "enrolled_faces": counts.get(ENROLLED, 0),
            "indexed_faces": counts.get(INDEX, 0),
            "photos": sum(photos.values()),
            "photos_unreadable": photos.get(ERROR, 0),
        }


class _PhotoFaces:
    """The faces found in an indexed photo (:class:`~indexer.sync.Dependents`): they follow their photo when it
    moves and go when it changes or goes."""

    def moved(self, s: Session, file_id: int, path: str) -> None:
        s.execute(update(FaceRecord).where(FaceRecord.photo_id == file_id).values(path=path))

    def drop(self, s: Session, file_ids: Sequence[int]) -> set[int]:
        ids = set(s.scalars(select(FaceRecord.id).where(FaceRecord.photo_id.in_(file_ids))))
        s.execute(delete(FaceRecord).where(FaceRecord.photo_id.in_(file_ids)))
        return ids
