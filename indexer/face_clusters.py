"""People found without enrolling them: the faces of indexed photos grouped into clusters, kept in the database.

:class:`FaceClusters` works on a :class:`~indexer.faces.FaceGallery`'s faces found by ``index_folder`` (rows of
``faces`` with ``source == "index"``). A cluster is a ``face_clusters`` row; a face's ``cluster_id`` says which
person it was grouped into (null: unclustered). Face ids are the rows' primary keys and stay the same while the
photo does; when a photo changes or goes its faces go (the sync engine does that), and a cluster left without
faces is dropped at the next :meth:`FaceClusters.cluster`.

- :meth:`~FaceClusters.cluster` is incremental: faces already in a cluster stay there (user merges and splits are
  kept); every other face joins the existing cluster whose mean vector it is most like, when that similarity is at
  least the threshold and the cluster holds no face of its photo; the faces left are clustered among themselves
  (:func:`retrieval.faces.clustering.cluster_faces`) into new clusters, or stay unclustered. An unnamed cluster
  left with fewer than ``min_size`` faces (its photos went) is dissolved. ``rebuild=True``
  clusters every face again and gives each new cluster the id (and name) of the old cluster it overlaps most.
- :meth:`~FaceClusters.name` makes a cluster an enrolled identity: its faces are enrolled under the name
  (:meth:`FaceGallery.enroll_indexed_faces <indexer.faces.FaceGallery.enroll_indexed_faces>`), so that
  ``identify`` knows the person; faces that later join a named cluster are enrolled too. Naming a cluster with a
  name another cluster has merges the two.
- :meth:`~FaceClusters.merge` and :meth:`~FaceClusters.split` (by face ids, or by clustering the cluster again
  at a stricter threshold) correct it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from retrieval.faces.clustering import ClusterParams, attach, cluster_faces

from . import db
from .db import FaceCluster, FaceRecord, Identity
from .errors import LookalikeError
from .faces import INDEX, FaceGallery
from .store import chunks, write_lock

log = logging.getLogger(__name__)

#: The default: average-linkage agglomerative clustering, parameters chosen on half of LFW's people and measured
#: on the other half (``python -m benchmarks.bench_face_clusters``; README).
DEFAULT_PARAMS = ClusterParams(algorithm="agglomerative", threshold=0.45, min_size=2)
_SETTINGS_KEY = "face_clusters"
#: How much stricter each try of :meth:`FaceClusters.split` without face ids clusters the cluster again.
SPLIT_STEP = 0.05

BoxXYWH = tuple[float, float, float, float]


@dataclass
class ClusterFace:
    """A face: its id (``faces.id``), photo and box ``(x, y, w, h)`` in the photo's original pixels."""

    id: int
    path: str
    box: BoxXYWH

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "path": self.path, "box": list(self.box)}


@dataclass
class Person:
    """A cluster: its id, the name it was given (``None`` until :meth:`FaceClusters.name`) and its faces."""

    id: int
    name: str | None
    faces: list[ClusterFace] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "faces": [f.to_dict() for f in self.faces]}


@dataclass
class ClusterListing:
    """Every cluster (largest first) and the faces in none."""

    clusters: list[Person] = field(default_factory=list)
    unclustered: list[ClusterFace] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "clusters": [c.to_dict() for c in self.clusters],
            "unclustered": [f.to_dict() for f in self.unclustered],
        }


@dataclass
class ClusterReport:
    """What one :meth:`FaceClusters.cluster` run did."""

    params: ClusterParams
    rebuilt: bool = False
    faces: int = 0
    #: faces that were not in a cluster before this run
    new_faces: int = 0
    #: of those, faces that joined an existing cluster
    joined: int = 0
    new_clusters: int = 0
    clusters: int = 0
    unclustered: int = 0
    #: clusters gone: left without faces (their photos changed or went), dissolved, or not found again (rebuild)
    dropped: int = 0
    seconds: float = 0.0


def _box(r: Any) -> BoxXYWH:
    return (round(r.x0, 1), round(r.y0, 1), round(r.x1 - r.x0, 1), round(r.y1 - r.y0, 1))


def _unit(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype=np.float32)


class FaceClusters:
    """The people of a :class:`~indexer.faces.FaceGallery`'s indexed faces. ``params``: how to cluster (default:
    what the gallery stored at its last run, else :data:`DEFAULT_PARAMS`)."""

    def __init__(self, gallery: FaceGallery, params: ClusterParams | None = None) -> None:
        self.gallery = gallery
        self._params = params

    # ------------------------------------------------------------------ settings
    @property
    def params(self) -> ClusterParams:
        """The parameters given, else those stored by the last run with parameters, else the default: for the
        ``sface`` backend :data:`DEFAULT_PARAMS` (tuned on its vectors); for another backend, whose similarities
        run on another scale, the same algorithm at the gallery's decision threshold."""
        if self._params is not None:
            return self._params
        with self.gallery.session() as s:
            d = db.get_setting(s, _SETTINGS_KEY)
        if d is not None:
            return ClusterParams.from_dict(d)
        settings = self.gallery.settings
        if settings.backend == "sface" or settings.threshold is None:
            return DEFAULT_PARAMS
        return dataclasses.replace(DEFAULT_PARAMS, threshold=float(settings.threshold))

    # ------------------------------------------------------------------ reading
    def _faces(self, s: Session) -> list[Any]:
        return list(
            s.execute(
                select(FaceRecord.id, FaceRecord.photo_id, FaceRecord.cluster_id, FaceRecord.vector)
                .where(FaceRecord.source == INDEX, FaceRecord.vector.is_not(None))
                .order_by(FaceRecord.id)
            )
        )

    def listing(self) -> ClusterListing:
        """Every cluster with its name and faces (largest cluster first, faces by path), and the unclustered faces."""
        with self.gallery.session() as s:
            rows = list(
                s.execute(
                    select(
                        FaceRecord.id,
                        FaceRecord.path,
                        FaceRecord.x0,
                        FaceRecord.y0,
                        FaceRecord.x1,
                        FaceRecord.y1,
                        FaceRecord.cluster_id,
                    )
                    .where(FaceRecord.source == INDEX)
                    .order_by(FaceRecord.path, FaceRecord.x0, FaceRecord.id)
                )
            )
            names = dict(
                s.execute(
                    select(FaceCluster.id, Identity.name).outerjoin(Identity, FaceCluster.identity_id == Identity.id)
                ).all()
            )
        out = ClusterListing()
        people: dict[int, Person] = {}
        for r in rows:
            face = ClusterFace(int(r.id), r.path, _box(r))
            if r.cluster_id is None or r.cluster_id not in names:
                out.unclustered.append(face)
                continue
            person = people.get(r.cluster_id)
            if person is None:
                person = people[r.cluster_id] = Person(int(r.cluster_id), names[r.cluster_id])
            person.faces.append(face)
        out.clusters = sorted(people.values(), key=lambda p: (-len(p.faces), p.id))
        return out

    # ------------------------------------------------------------------ clustering
    def cluster(self, rebuild: bool = False, params: ClusterParams | None = None) -> ClusterReport:
        """Group the indexed faces into people (incrementally; ``rebuild``: all of them again). ``params``, when
        given, become the gallery's clustering parameters."""
        t0 = time.perf_counter()
        if params is not None:
            self._params = params
        p = self.params
        report = ClusterReport(params=p, rebuilt=rebuild)
        touched: set[int] = set()
        with write_lock(self.gallery):
            with self.gallery.session() as s, s.begin():
                if params is not None:
                    db.set_setting(s, _SETTINGS_KEY, p.to_dict())
                rows = self._faces(s)
                report.faces = len(rows)
                ids = np.array([r.id for r in rows], np.int64)
                photos = np.array([r.photo_id if r.photo_id is not None else -1 - r.id for r in rows], np.int64)
                old = np.array([r.cluster_id if r.cluster_id is not None else -1 for r in rows], np.int64)
                dim = len(_unit(rows[0].vector)) if rows else 0
                vecs = np.stack([_unit(r.vector) for r in rows]) if rows else np.zeros((0, dim), np.float32)
                known = set(s.scalars(select(FaceCluster.id)))
                old[~np.isin(old, list(known))] = -1
                if rebuild:
                    new = self._rebuild(s, vecs, photos, old, p, report)
                else:
                    new = self._incremental(s, vecs, photos, old, p, report)
                # an unnamed cluster that lost faces (photos gone) below min_size is dissolved (not one the user made)
                named = set(
                    s.scalars(
                        select(FaceCluster.id).where(
                            (FaceCluster.identity_id.is_not(None)) | (FaceCluster.by_user.is_(True))
                        )
                    )
                )
                cids, sizes = np.unique(new[new >= 0], return_counts=True)
                small = [int(c) for c, n in zip(cids, sizes) if n < p.min_size and int(c) not in named]
                new[np.isin(new, small)] = -1
                changed = new != old
                touched = {int(c) for c in np.concatenate([new[changed], old[changed]]) if c >= 0}
                for cid in np.unique(new[changed]):
                    face_ids = ids[changed & (new == cid)].tolist()
                    value = None if cid < 0 else int(cid)
                    for chunk in chunks(face_ids, 500):
                        s.execute(update(FaceRecord).where(FaceRecord.id.in_(chunk)).values(cluster_id=value))
                used = set(new[new >= 0].tolist())
                empty = known - used
                for chunk in chunks(sorted(empty), 500):
                    s.execute(delete(FaceCluster).where(FaceCluster.id.in_(chunk)))
                report.dropped = len(empty)
                report.clusters = len(used)
                report.unclustered = int((new < 0).sum())
        self._sync_names(touched)
        report.seconds = time.perf_counter() - t0
        log.info(
            "%d faces: %d clusters, %d unclustered, %d new clusters, %d faces joined",
            report.faces,
            report.clusters,
            report.unclustered,
            report.new_clusters,
            report.joined,
        )
        return report

    def _new_cluster(self, s: Session, identity_id: int | None = None, by_user: bool | None = None) -> int:
        row = FaceCluster(identity_id=identity_id, by_user=by_user)
        s.add(row)
        s.flush()
        return int(row.id)

    def _incremental(
        self, s: Session, vecs: np.ndarray, photos: np.ndarray, old: np.ndarray, p: ClusterParams, report: ClusterReport
    ) -> np.ndarray:
        new = old.copy()
        free = np.flatnonzero(old < 0)
        report.new_faces = len(free)
        if not len(free):
            return new
        cids = np.unique(old[old >= 0])
        if len(cids):
            centroids = np.stack([vecs[old == c].mean(0) for c in cids])
            taken = [set(photos[old == c].tolist()) for c in cids]
            joined = attach(vecs[free], photos[free], centroids, taken, p.threshold)
            hit = joined >= 0
            new[free[hit]] = cids[joined[hit]]
            report.joined = int(hit.sum())
            free = free[~hit]
        labels = cluster_faces(vecs[free], p, photos[free]) if len(free) else np.zeros(0, np.int64)
        for lab in range(int(labels.max(initial=-1)) + 1):
            new[free[labels == lab]] = self._new_cluster(s)
            report.new_clusters += 1
        return new

    def _rebuild(
        self, s: Session, vecs: np.ndarray, photos: np.ndarray, old: np.ndarray, p: ClusterParams, report: ClusterReport
    ) -> np.ndarray:
        report.new_faces = int((old < 0).sum())
        labels = cluster_faces(vecs, p, photos)
        # each new cluster takes the id of the old cluster it shares most faces with (each old id once)
        both = (labels >= 0) & (old >= 0)
        pairs, counts = np.unique(np.stack([labels[both], old[both]], 1), axis=0, return_counts=True)
        mapping: dict[int, int] = {}
        used: set[int] = set()
        for k in np.argsort(-counts, kind="stable"):
            lab, cid = int(pairs[k][0]), int(pairs[k][1])
            if lab not in mapping and cid not in used:
                mapping[lab] = cid
                used.add(cid)
        new = np.full(len(labels), -1, np.int64)
        for lab in range(int(labels.max(initial=-1)) + 1):
            if lab not in mapping:
                mapping[lab] = self._new_cluster(s)
                report.new_clusters += 1
            new[labels == lab] = mapping[lab]
        return new

    # ------------------------------------------------------------------ names
    def _require(self, s: Session, cluster_id: int) -> FaceCluster:
        row = s.get(FaceCluster, cluster_id)
        if row is None:
            some = list(s.scalars(select(FaceCluster.id).order_by(FaceCluster.id).limit(10)))
            hint = (
                f"; clusters: {', '.join(map(str, some))}{' ...' if len(some) == 10 else ''}"
                if some
                else "; run `lookalike faces cluster` first"
            )
            raise LookalikeError(f"no face cluster {cluster_id}{hint}")
        return row

    def _name_of(self, s: Session, row: FaceCluster) -> str | None:
        return (
            None if row.identity_id is None else s.scalar(select(Identity.name).where(Identity.id == row.identity_id))
        )

    def _members(self, s: Session, cluster_id: int) -> list[int]:
        return list(s.scalars(select(FaceRecord.id).where(FaceRecord.cluster_id == cluster_id)))

    def _sync_names(self, cluster_ids: Iterable[int]) -> None:
        """Enroll the named clusters among ``cluster_ids`` from their current faces (outside the write lock: the
        gallery takes it)."""
        todo: list[tuple[str, list[int]]] = []
        with self.gallery.session() as s:
            for cid in sorted(set(cluster_ids)):
                row = s.get(FaceCluster, cid)
                name = None if row is None else self._name_of(s, row)
                if name is not None:
                    todo.append((name, self._members(s, cid)))
        for name, faces in todo:
            self.gallery.enroll_indexed_faces(name, faces)

    def name(self, cluster_id: int, name: str) -> int:
        """Name cluster ``cluster_id``: its faces are enrolled as ``name`` (``identify`` then knows them). When
        another cluster already has that name, the two are merged. Returns the id of the named cluster."""
        name = name.strip()
        with self.gallery.session() as s:
            row = self._require(s, cluster_id)
            current = self._name_of(s, row)
            ident = s.scalar(select(Identity.id).where(Identity.name == name))
            other = (
                None
                if ident is None
                else s.scalar(
                    select(FaceCluster.id).where(FaceCluster.identity_id == ident, FaceCluster.id != cluster_id)
                )
            )
            faces = self._members(s, cluster_id)
        if other is not None:
            return self.merge(int(other), cluster_id)
        if current == name:
            return cluster_id
        if current is not None:
            self.gallery.enroll_indexed_faces(current, [])
        self.gallery.enroll_indexed_faces(name, faces)
        with write_lock(self.gallery), self.gallery.session() as s, s.begin():
            ident = s.scalar(select(Identity.id).where(Identity.name == name))
            s.execute(update(FaceCluster).where(FaceCluster.id == cluster_id).values(identity_id=ident))
        return cluster_id

    # ------------------------------------------------------------------ corrections
    def merge(self, into: int, other: int) -> int:
        """Move every face of cluster ``other`` into cluster ``into`` and drop ``other``. ``into`` keeps its name,
        or takes ``other``'s when it had none. Returns ``into``."""
        if into == other:
            raise LookalikeError(f"cannot merge cluster {into} with itself")
        with write_lock(self.gallery), self.gallery.session() as s, s.begin():
            a, b = self._require(s, into), self._require(s, other)
            name_a, name_b = self._name_of(s, a), self._name_of(s, b)
            s.execute(update(FaceRecord).where(FaceRecord.cluster_id == other).values(cluster_id=into))
            if name_a is None and name_b is not None:
                a.identity_id = b.identity_id
            s.execute(delete(FaceCluster).where(FaceCluster.id == other))
        if name_a is not None and name_b is not None and name_b != name_a:
            self.gallery.enroll_indexed_faces(name_b, [])  # its faces are enrolled as name_a below
        self._sync_names([into])
        return into

    def split(self, cluster_id: int, face_ids: Sequence[int] | None = None) -> list[int]:
        """Split cluster ``cluster_id``. With ``face_ids``: those faces become a new (unnamed) cluster. Without:
        the cluster is clustered again, stricter by :data:`SPLIT_STEP` at a time, until parts of at least
        ``min_size`` faces come apart from its largest part: they become new clusters; the largest part and the
        faces in smaller parts keep the id and name. New clusters are the user's: kept even when small.
        Returns the new clusters' ids."""
        p = self.params
        with write_lock(self.gallery), self.gallery.session() as s, s.begin():
            self._require(s, cluster_id)
            rows = list(
                s.execute(
                    select(FaceRecord.id, FaceRecord.photo_id, FaceRecord.vector)
                    .where(FaceRecord.cluster_id == cluster_id)
                    .order_by(FaceRecord.id)
                )
            )
            ids = [int(r.id) for r in rows]
            if face_ids is not None:
                wanted = {int(f) for f in face_ids}
                strangers = sorted(wanted - set(ids))
                if strangers:
                    raise LookalikeError(
                        f"faces {', '.join(map(str, strangers))} are not in cluster {cluster_id} "
                        "(see `lookalike faces cluster --json`)"
                    )
                if not wanted or wanted == set(ids):
                    raise LookalikeError("give some, but not all, of the cluster's face ids to split off")
                parts = [sorted(wanted)]
            else:
                parts = self._split_parts(rows, p)
            new_ids = []
            for part in parts:
                cid = self._new_cluster(s, by_user=True)
                new_ids.append(cid)
                for chunk in chunks(part, 500):
                    s.execute(update(FaceRecord).where(FaceRecord.id.in_(chunk)).values(cluster_id=cid))
        self._sync_names([cluster_id])
        return new_ids

    def _split_parts(self, rows: list[Any], p: ClusterParams) -> list[list[int]]:
        """The parts of a cluster, other than the largest, of at least ``min_size`` faces, at the first stricter
        threshold where there are any (faces in smaller parts stay in the cluster)."""
        if len(rows) < 2:
            raise LookalikeError("a cluster of one face cannot be split")
        ids = np.array([r.id for r in rows], np.int64)
        photos = np.array([r.photo_id if r.photo_id is not None else -1 - r.id for r in rows], np.int64)
        vecs = np.stack([_unit(r.vector) for r in rows])
        threshold = p.threshold
        while threshold + SPLIT_STEP < 1.0:
            threshold += SPLIT_STEP
            tight = dataclasses.replace(p, algorithm="agglomerative", threshold=threshold, min_size=1)
            labels = cluster_faces(vecs, tight, photos)
            sizes = np.bincount(labels)
            parts = [ids[labels == lab].tolist() for lab in range(1, len(sizes)) if sizes[lab] >= p.min_size]
            if parts:
                return parts
        raise LookalikeError(
            f"the cluster does not fall apart into groups of {p.min_size} or more faces; "
            "give the face ids to split off (`lookalike faces split CLUSTER FACE_ID...`)"
        )


__all__ = [
    "DEFAULT_PARAMS",
    "ClusterFace",
    "ClusterListing",
    "ClusterReport",
    "FaceClusters",
    "Person",
]
