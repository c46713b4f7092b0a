"""The engine: a collection of images (SQLite metadata + vectors, FAISS index) that can be synced and searched.

The database is the source of truth. Vectors are written to it batch by batch, each batch in one
transaction, so a run killed at any moment loses at most the batch in flight; the next run picks up the
rows left ``pending``. The FAISS index file is a cache of the database: it is saved atomically with the
database's vector version beside it, and rebuilt from the database whenever the two disagree.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from retrieval.config import ModelConfig, RuntimeOptions
from retrieval.registry import UnknownNameError
from retrieval.rerank import AutoChoice, RerankSettings
from retrieval.whitening import Whitening, l2n_np, learn_pca_whitening

from . import db, sync
from .db import ERROR, INDEXED, PENDING, ImageRecord
from .errors import CollectionBusyError, LookalikeError, ModelMismatchError, SettingsError
from .explain import Explanation, explain_hits
from .imageio import DEFAULT_MAX_PIXELS, Box
from .index_cache import IndexCache, RowVectors
from .knn_graph import DEFAULT_K, GraphCache, KnnGraph, indexed_fingerprints
from .masking import Masker, MaskSettings
from .objects import (
    OBJECTS_INDEX_FILE,
    OBJECTS_STATE_FILE,
    FoundObject,
    ImageObjects,
    ObjectRecord,
    ObjectSettings,
    RememberingMasker,
    best_parts,
    count_objects,
    embed_objects,
    object_rows,
    owners,
)
from .pipeline import Embedded, Source, batch_and_workers, embed_files
from .ray_runner import RayJob, RayOptions, embed_on_ray, require_ray
from .reranking import AUTO_CHOICE_SETTING, DbaCache, graph_auto_choice, rerank_search, sampled_auto_choice
from .settings import build_embedder, build_masker
from .store import (
    VECTOR_DTYPES,
    IndexFile,
    NullProgress,
    Progress,
    Store,
    chunks,
    default_home,
    redact_url,
    vector_bytes,
    well_formed,
    write_lock,
)
from .sync import BatchWriter, FileSync, IndexReport
from .vector_index import IndexConfig, VectorIndex

if TYPE_CHECKING:
    from retrieval.model import Embedder

__all__ = [
    "Collection",
    "IndexReport",
    "SearchHit",
    "QueryResult",
    "Stats",
    "DoctorReport",
    "WhiteningSettings",
    "LookalikeError",
    "ModelMismatchError",
    "CollectionBusyError",
    "default_home",
]

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
INDEX_STATE_FILE = "index.json"


@dataclass
class WhiteningSettings:
    enabled: bool = False
    #: Output dimension (``None`` keeps all usable components).
    dim: int | None = 256
    #: Blend of each eigenvalue with their mean before whitening: 0 is plain PCA-whitening, near 1 a plain PCA
    #: rotation. Plain whitening learned on a small collection amplifies noise (COIL-20: mAP 0.92 -> 0.33);
    #: 0.95 keeps retrieval as good while cutting 1280 dimensions to 256 (benchmarks/bench_coil20.py).
    shrinkage: float = 0.95
    #: Learn only once at least this many vectors per output dimension exist.
    min_vectors_per_dim: float = 2.0
    #: Re-learn when the collection has grown or shrunk by this factor since the last learning.
    relearn_factor: float = 2.0


@dataclass
class SearchHit:
    id: int
    path: str
    score: float
    width: int | None = None
    height: int | None = None
    #: objects collections: the part of the image that matched, ``(x, y, w, h)`` in pixels of the image as
    #: shown; ``None``: the whole image
    box: tuple[int, int, int, int] | None = None


@dataclass
class ImageInfo:
    """One image as the collection knows it."""

    id: int
    path: str
    width: int | None
    height: int | None
    content_hash: str | None
    size: int
    mtime_ns: int
    status: str
    error: str | None = None


@dataclass
class QueryResult:
    query: str
    hits: list[SearchHit] = field(default_factory=list)
    error: str | None = None
    #: the re-ranking that produced the hits' scores (:meth:`RerankSettings.describe`)
    rerank: str = "none"


@dataclass
class Stats:
    home: str
    database: str
    model: str | None
    images: int
    indexed: int
    pending: int
    errors: int
    index_kind: str | None
    index_vectors: int | None
    dim: int | None
    whitening: str | None
    mask: str = "whole images"
    #: images embedded whole in a masked collection because their mask was unusable
    mask_fallbacks: int = 0
    objects: str = "whole images only"
    #: objects collections: object vectors, and images whose objects are the fallback windows (nothing found)
    object_vectors: int = 0
    object_fallbacks: int = 0


@dataclass
class DoctorReport:
    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)
    #: the database file itself is damaged (nothing else was checked; the problem says how to recover)
    damaged: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems


EmbedderFactory = Callable[[ModelConfig, RuntimeOptions], "Embedder"]


MaskerFactory = Callable[[MaskSettings], Masker]
#: An objects collection's objects of one image, found and embedded when called: ``(objects, (n, D) vectors)``.
FoundLater = Callable[[], tuple[list[FoundObject], np.ndarray]]


class Collection(Store):
    """A searchable image collection kept in ``home`` (or in the database at ``db_url``).

    Dependencies come in through the constructor: ``embedder_factory`` builds the network lazily (a rescan
    that finds nothing new never loads a model), ``runtime`` holds device / batch / worker choices.
    """

    def __init__(
        self,
        home: str | Path | None = None,
        db_url: str | None = None,
        runtime: RuntimeOptions | None = None,
        embedder_factory: EmbedderFactory = build_embedder,
        masker_factory: MaskerFactory = Masker,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        commit_every: int = 64,
        create: bool = True,
    ) -> None:
        super().__init__(home, db_url, runtime, max_pixels, commit_every, create)
        self._embedder_factory = embedder_factory
        self._embedder: Embedder | None = None
        self._masker_factory = masker_factory
        self._masker: Masker | None = None
        self._sync = FileSync(
            ImageRecord, db.VECTOR_VERSION, reset=dict(vector=None), dependents=ImageObjects(), own_vectors=True
        )
        #: objects collections (:mod:`indexer.objects`): the index of object vectors, beside the image index
        self._objects = IndexCache(
            self,
            IndexFile(self.home, OBJECTS_INDEX_FILE, OBJECTS_STATE_FILE),
            db.VECTOR_VERSION,
            RowVectors(ObjectRecord, (), "model_dim", self._transform),
            config=lambda: self.index_config,
            name="object index",
        )
        self._cache = IndexCache(
            self,
            IndexFile(self.home, INDEX_FILE, INDEX_STATE_FILE),
            db.VECTOR_VERSION,
            RowVectors(ImageRecord, (ImageRecord.status == INDEXED,), "model_dim", self._transform),
            config=lambda: self.index_config,
            name="image index",
            learn=self._maybe_learn_whitening,
        )
        #: the k-NN graph (duplicates, re-ranking) and the DBA vectors: derived caches of the database
        self._graph = GraphCache(
            self,
            self.index,
            indexed_fingerprints(ImageRecord, (ImageRecord.status == INDEXED,)),
            self._vectors_of,
            self._vector_version,
        )
        self._dba = DbaCache(self, self._graph, self._vectors_of)
        self._auto_made: AutoChoice | None = None

    # ------------------------------------------------------------------ settings
    @property
    def model_config(self) -> ModelConfig | None:
        with self.session() as s:
            d = db.get_setting(s, "model")
        return None if d is None else ModelConfig.from_dict(d)

    @property
    def mask_settings(self) -> MaskSettings:
        with self.session() as s:
            d = db.get_setting(s, "mask")
        return MaskSettings() if d is None else MaskSettings.from_dict(d)

    @property
    def object_settings(self) -> ObjectSettings:
        """Whether images are indexed as their objects too (:mod:`indexer.objects`)."""
        with self.session() as s:
            d = db.get_setting(s, "objects")
        return ObjectSettings() if d is None else ObjectSettings.from_dict(d)

    @property
    def vector_dtype(self) -> str:
        """How the database keeps the vectors written from now on: ``"float32"`` or ``"float16"`` (half the size;
        :data:`~indexer.store.VECTOR_DTYPES`)."""
        with self.session() as s:
            return str(db.get_setting(s, "vector_dtype") or "float32")

    @property
    def index_config(self) -> IndexConfig:
        with self.session() as s:
            d = db.get_setting(s, "index")
        return IndexConfig() if d is None else IndexConfig.from_dict(d)

    @property
    def embedding_device(self) -> str | None:
        """Where and how the network runs (``Embedder.describe_device``: device, precision, batch, decoding
        threads) once it has been built in this process; ``None`` before."""
        describe = getattr(self._embedder, "describe_device", None)
        return describe() if describe is not None else None

    @property
    def whitening_settings(self) -> WhiteningSettings:
        with self.session() as s:
            d = db.get_setting(s, "whitening")
        return WhiteningSettings() if d is None else WhiteningSettings(**d)

    @property
    def rerank_settings(self) -> RerankSettings:
        """The collection's default re-ranking (each search may ask for another)."""
        with self.session() as s:
            d = db.get_setting(s, "rerank")
        return RerankSettings() if d is None else RerankSettings.from_dict(d)

    def _whitening(self, s: Session) -> Whitening | None:
        data = db.get_blob(s, "whitening")
        return None if data is None else Whitening.from_bytes(data)

    def configure(
        self,
        model: ModelConfig | None = None,
        index: IndexConfig | None = None,
        whitening: WhiteningSettings | None = None,
        reembed: bool = False,
        mask: MaskSettings | None = None,
        rerank: RerankSettings | None = None,
        objects: ObjectSettings | None = None,
        vector_dtype: str | None = None,
    ) -> None:
        """Set the collection's model / index / whitening / mask / re-ranking / objects settings, and how the
        database keeps vectors (``vector_dtype``: for the vectors written from then on; those kept stay as they
        are and are read either way).

        A model or masking different from the one that made the stored vectors is refused with
        :class:`ModelMismatchError` unless ``reembed`` is true, which marks every image for re-embedding.
        Every new setting is tried first (the network and the segmenter built, the index kind checked), so a
        setting that cannot work raises :class:`LookalikeError` and nothing is recorded.
        """
        if vector_dtype is not None and vector_dtype not in VECTOR_DTYPES:
            raise SettingsError(f"unknown vector dtype {vector_dtype!r}; one of: {', '.join(VECTOR_DTYPES)}")
        embedder = self._try_settings(model, index, mask)
        with self.session() as s, s.begin():
            if vector_dtype is not None:
                db.set_setting(s, "vector_dtype", vector_dtype)
            self._change_embedding_setting(s, "mask", MaskSettings, mask, reembed)
            self._change_embedding_setting(s, "objects", ObjectSettings, objects, reembed)
            stored = db.get_setting(s, "model")
            if model is not None:
                if stored is not None and ModelConfig.from_dict(stored) != model:
                    has_vectors = s.scalar(select(func.count()).where(ImageRecord.vector.is_not(None))) or 0
                    if has_vectors and not reembed:
                        raise ModelMismatchError(
                            f"this collection was built with {ModelConfig.from_dict(stored).describe()}, "
                            f"not {model.describe()}; re-run with --reembed to re-embed all "
                            f"{has_vectors} images with the new model, or use another --home"
                        )
                    if has_vectors:
                        self._reset_vectors(s)
                db.set_setting(s, "model", model.to_dict())
            elif stored is None:
                db.set_setting(s, "model", ModelConfig().to_dict())
            if index is not None:
                if db.get_setting(s, "index") != index.to_dict():
                    db.bump_vector_version(s)  # the index file no longer matches: rebuilt at the next update
                db.set_setting(s, "index", index.to_dict())
            if whitening is not None:
                if whitening != self.whitening_settings:
                    db.set_blob(s, "whitening", None)  # relearned at the end of the next index run
                    db.bump_vector_version(s)
                db.set_setting(s, "whitening", whitening.__dict__)
            if rerank is not None:
                db.set_setting(s, "rerank", rerank.to_dict())
        self._embedder = embedder
        self._cache.forget()
        self._objects.forget()
        self._graph.forget()
        self._dba.forget()

    def _change_embedding_setting(self, s: Session, key: str, kind: type, new: Any, reembed: bool) -> None:
        """Store ``new`` (a settings dataclass with ``from_dict`` / ``to_dict`` / ``describe``; ``None``: keep)
        as setting ``key``, a setting that changes what the vectors are: refused with
        :class:`ModelMismatchError` when vectors made otherwise exist, unless ``reembed`` (then every image is
        marked for re-embedding)."""
        stored = db.get_setting(s, key)
        before = kind.from_dict(stored) if stored else kind()
        if new is None or before == new:
            return
        has_vectors = s.scalar(select(func.count()).where(ImageRecord.vector.is_not(None))) or 0
        if has_vectors and not reembed:
            raise ModelMismatchError(
                f"this collection was embedded with {before.describe()}, not {new.describe()}; re-run "
                f"with --reembed to re-embed all {has_vectors} images, or use another --home"
            )
        if has_vectors:
            self._reset_vectors(s)
        db.set_setting(s, key, new.to_dict())

    def _try_settings(
        self, model: ModelConfig | None, index: IndexConfig | None, mask: MaskSettings | None
    ) -> Embedder | None:
        """Build what new settings need, raising :class:`LookalikeError` for any that cannot work. Returns the
        network of the model the collection will use (``None`` when it stays unbuilt: nothing new)."""
        if mask is not None and mask != self.mask_settings:
            self._masker = self._build_masker(mask)
        stored = self.model_config
        embedder = self._embedder if model is None or model == stored else self._build_embedder(model)
        if index is not None and index != self.index_config:
            dim = embedder.dim if embedder is not None else None
            if dim is None:
                with self.session() as s:
                    dim = int(db.get_setting(s, "model_dim") or 0) or None
            try:
                index.check_kind(dim or 1280)
            except ValueError as exc:
                raise SettingsError(str(exc)) from None
        return embedder

    def _reset_vectors(self, s: Session) -> None:
        s.execute(
            update(ImageRecord).values(vector=None, status=PENDING, size=-1, mask_fraction=None, mask_fallback=None)
        )
        s.execute(delete(ObjectRecord))
        db.set_blob(s, "whitening", None)
        db.bump_vector_version(s)

    def _build_masker(self, settings: MaskSettings) -> Masker | None:
        return build_masker(settings, self._masker_factory)

    def _build_embedder(self, model: ModelConfig) -> Embedder:
        try:
            return self._embedder_factory(model, self.runtime)
        except (UnknownNameError, OSError, ValueError, RuntimeError) as exc:  # unknown backbone, missing weights
            raise SettingsError(str(exc)) from None

    def _get_masker(self) -> Masker | None:
        settings = self.mask_settings
        if not settings.enabled:
            return None
        if self._masker is None or self._masker.settings != settings:
            self._masker = self._build_masker(settings)
        return self._masker

    def _get_embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = self._build_embedder(self.model_config or ModelConfig())
        return self._embedder

    # ------------------------------------------------------------------ indexing
    def index_folder(
        self, folder: str | Path, progress: Progress | None = None, ray: RayOptions | None = None
    ) -> IndexReport:
        """Sync the collection with ``folder``: embed new and changed images, drop deleted ones, follow moves.
        ``ray``: embed on a Ray cluster (:mod:`indexer.ray_runner`; every node must read ``folder`` at the same
        path) instead of in this process; everything else runs here as always."""
        if ray is not None:
            require_ray()

        def prepare() -> None:
            if self.model_config is None:
                self.configure()

        report = IndexReport(folder=str(folder))
        sync.index_folder(
            self,
            folder,
            report,
            self._sync,
            self._cache,
            functools.partial(self._embed_rows, ray=ray),
            progress,
            description="embedding" if ray is None else "embedding on Ray",
            prepare=prepare,
            derived_cache=self._objects if self.object_settings.enabled else None,
        )
        self._refresh_rerank_caches(changed=report.embedded + report.removed)
        return report

    def _refresh_rerank_caches(
        self, graph: bool = False, dba: bool = False, locked: bool = False, changed: int | None = None
    ) -> None:
        """After the collection changed: bring the k-NN graph and the DBA vectors up to date when they are kept
        (a file exists), the default re-ranking needs them, or ``graph`` / ``dba`` ask for them, so searches
        find them current; ``auto``'s choice is carried over ``changed`` images added, re-embedded or removed
        (:meth:`AutoChoice.carried`), else made again (``None``: always). ``locked``: the caller holds the write
        lock."""
        settings = self.rerank_settings
        if settings.method == "auto":  # kept with the collection (searches read it)
            if self.model_config is None or not len(self._cache.current()):
                return
            with self.session() as s:
                kept = db.get_setting(s, AUTO_CHOICE_SETTING)
            version = self._graph.version()
            choice = None
            if kept is not None and changed is not None:
                choice = AutoChoice.from_dict(kept).carried(settings, version, changed)
            if choice is None:
                choice = self._make_auto_choice(settings, locked)
            if kept != choice.to_dict():
                with self.session() as s, s.begin():
                    db.set_setting(s, AUTO_CHOICE_SETTING, choice.to_dict())
            settings = choice.apply(settings)
        dba = dba or self._dba.file.path.exists() or settings.method == "dba"
        graph = graph or dba or self._graph.file.path.exists() or settings.graph_neighbours > 0
        if self.model_config is None or not graph:
            return
        with self.session() as s:
            if not self._cache.vectors.count(s):
                return
        self._graph.current(max(settings.graph_neighbours, DEFAULT_K), locked=locked)
        if dba:
            self._dba.current(settings, locked=locked)

    def _embed_rows(
        self, todo: list[tuple[int, str]], report: IndexReport, writer: BatchWriter, ray: RayOptions | None = None
    ) -> None:
        objects, dtype = self.object_settings, self.vector_dtype
        paths = [p for _, p in todo]
        results = self._embed_here(paths, objects) if ray is None else self._embed_on_ray(paths, objects, ray)
        with contextlib.closing(results):
            for out, found in results:
                row_id = todo[out.index][0]
                if out.error is not None:
                    writer.put(dict(id=row_id, status=ERROR, error=out.error, vector=None))
                    report.skipped.append((paths[out.index], out.error))
                    continue
                assert out.vector is not None
                writer.put(
                    dict(
                        id=row_id,
                        status=INDEXED,
                        error=None,
                        vector=vector_bytes(out.vector, dtype),
                        width=out.width,
                        height=out.height,
                        content_hash=out.content_hash,
                        mask_fraction=out.mask_fraction,
                        mask_fallback=out.mask_fallback,
                    ),
                    rows=object_rows(row_id, *found(), dtype=dtype) if found is not None else (),
                    indexed=True,
                )
                report.embedded += 1
                if out.mask_fallback is not None:
                    report.mask_fallbacks += 1

    def _embed_here(self, paths: list[str], objects: ObjectSettings) -> Iterator[tuple[Embedded, FoundLater | None]]:
        """Embed ``paths`` in this process: each file's result and, in an objects collection, how to get its
        objects (found and embedded when asked, right after the image)."""
        embedder = self._get_embedder()
        masker: Masker | RememberingMasker | None = self._get_masker()
        if objects.enabled and masker is not None:  # the objects pass reuses the pipeline's masks
            masker = RememberingMasker(masker)  # type: ignore[arg-type]
        with self.session() as s, s.begin():
            db.set_setting(s, "model_dim", embedder.dim)
        for out in embed_files(
            paths,
            embedder,
            batch_size=self.runtime.batch_size,
            workers=self.runtime.workers,
            max_pixels=self.max_pixels,
            masker=masker,  # type: ignore[arg-type]
        ):
            path = paths[out.index]
            found = functools.partial(embed_objects, path, embedder, masker, objects, self.max_pixels)
            yield out, found if objects.enabled else None  # type: ignore[arg-type]

    def _embed_on_ray(
        self, paths: list[str], objects: ObjectSettings, ray: RayOptions
    ) -> Iterator[tuple[Embedded, FoundLater | None]]:
        """Embed ``paths`` on Ray (:func:`indexer.ray_runner.embed_on_ray`), as :meth:`_embed_here` does here."""
        job = RayJob(self.model_config or ModelConfig(), self.runtime, self.mask_settings, objects, self.max_pixels)
        dim_recorded = False
        for out, found in embed_on_ray(paths, job, ray):
            if not dim_recorded and out.vector is not None:
                with self.session() as s, s.begin():
                    db.set_setting(s, "model_dim", int(out.vector.shape[0]))
                dim_recorded = True
            yield out, (None if found is None else (lambda f=found: f))

    # ------------------------------------------------------------------ FAISS index upkeep
    def _vector_version(self) -> int:
        return self._cache.version()

    def _transform(self, s: Session) -> tuple[Callable[[np.ndarray], np.ndarray], int | None]:
        """Stored raw vectors -> indexed ones: the collection's whitening when learned, else L2 normalisation."""
        whitening = self._whitening(s)
        return (whitening.apply, whitening.out_dim) if whitening is not None else (l2n_np, None)

    def _maybe_learn_whitening(self, s: Session) -> bool:
        """(Re)learn the PCA-whitening from the collection when due. Returns whether it changed."""
        settings = self.whitening_settings
        current = self._whitening(s)
        if not settings.enabled:
            if current is not None:
                db.set_blob(s, "whitening", None)
                return True
            return False
        n = self._cache.vectors.count(s)
        learned_on = int(db.get_setting(s, "whitening_learned_on", 0))
        if (
            current is not None
            and learned_on
            and 1 / settings.relearn_factor < n / learned_on < settings.relearn_factor
        ):
            return False
        dim = settings.dim
        _, raw = self._cache.vectors.raw(s)
        if raw.shape[0] == 0:
            return False
        target_dim = min(dim or raw.shape[1], raw.shape[1])
        if n < settings.min_vectors_per_dim * target_dim:
            log.info(
                "whitening needs %d vectors, the collection has %d: searching unwhitened vectors",
                int(settings.min_vectors_per_dim * target_dim),
                n,
            )
            if current is not None:
                db.set_blob(s, "whitening", None)
                return True
            return False
        log.info("learning PCA-whitening %d -> %d from %d vectors", raw.shape[1], target_dim, n)
        w = learn_pca_whitening(raw, target_dim, shrinkage=settings.shrinkage)
        db.set_blob(s, "whitening", w.to_bytes())
        db.set_setting(s, "whitening_learned_on", n)
        return True

    # ------------------------------------------------------------------ search
    def index(self) -> VectorIndex:
        """The FAISS index to search (ids are the images' ids), rebuilt from the database when stale."""
        return self._cache.current()

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Every indexed image's vector as searched (whitened or L2-normalised): ``(N,)`` ids, ``(N, D)``."""
        with self.session() as s:
            ids, vecs, _ = self._cache.vectors.indexed(s)
        return ids, vecs

    def _vectors_of(self, ids: np.ndarray) -> np.ndarray:
        """Indexed vectors of ``ids`` ``(n,)`` (all indexed), in that order: ``(n, D)``."""
        with self.session() as s:
            found, vecs, _ = self._cache.vectors.indexed(s, [int(i) for i in ids])
        order = np.argsort(found)
        at = order[np.searchsorted(found, ids, sorter=order)]
        if found.size != len(set(int(i) for i in ids)) or not np.array_equal(found[at], ids):
            raise LookalikeError("the collection changed while reading it; run the command again")
        return vecs[at]

    def knn_graph(self, k: int = DEFAULT_K, progress: Progress | None = None) -> KnnGraph:
        """The collection's k-nearest-neighbour graph (at least ``k`` neighbours per indexed image), kept in the
        home and brought up to date incrementally (:mod:`indexer.knn_graph`); shared by duplicates and re-ranking."""
        return self._graph.current(k, progress)

    def embed_paths(
        self, paths: Sequence[Source], box: Box | None = None
    ) -> Iterator[tuple[int, np.ndarray | None, str | None]]:
        """Embed query images (files, or encoded images in memory) with the collection's model, masking and
        whitening; ``box`` ``(x, y, w, h)``: only that region of each. Yields ``(position, vector, error)``."""
        embedder = self._get_embedder()
        masker = self._get_masker()
        with self.session() as s:
            final, _ = self._transform(s)
        for out in embed_files(
            list(paths),
            embedder,
            batch_size=self.runtime.batch_size,
            workers=min(batch_and_workers(embedder, None, self.runtime.workers)[1], max(0, len(paths) // 8)),
            max_pixels=self.max_pixels,
            masker=masker,
            box=box,
        ):
            if out.error is not None:
                yield out.index, None, out.error
            else:
                assert out.vector is not None
                yield out.index, final(out.vector[None])[0], None

    def search(
        self,
        queries: Sequence[str | Path],
        k: int = 10,
        threshold: float | None = None,
        progress: Progress | None = None,
        box: Box | None = None,
        rerank: RerankSettings | str | None = None,
    ) -> list[QueryResult]:
        """Nearest neighbours of each query image file, best first. Unreadable queries carry ``error``.
        ``box`` ``(x, y, w, h)``, in pixels of the query as shown: search by that region only. ``rerank``: a
        re-ranking for this search (settings, or a method name with the collection's parameters; default: the
        collection's, :attr:`rerank_settings`); ``threshold`` applies to the re-ranked scores."""
        paths = [str(Path(q).expanduser().resolve()) for q in queries]
        return self._search_sources(paths, paths, k, threshold, progress, box, rerank)

    def search_images(
        self,
        images: Sequence[bytes],
        k: int = 10,
        threshold: float | None = None,
        box: Box | None = None,
        names: Sequence[str] | None = None,
        progress: Progress | None = None,
        rerank: RerankSettings | str | None = None,
    ) -> list[QueryResult]:
        """As :meth:`search`, for encoded images in memory (uploads), decoded with the same guards (size
        limit, content check); ``names`` label the results (default ``upload 1``, ...)."""
        labels = list(names) if names is not None else [f"upload {i + 1}" for i in range(len(images))]
        return self._search_sources(list(images), labels, k, threshold, progress, box, rerank)

    def explain(
        self, query: Source | Path, hits: Sequence[SearchHit], out_dir: str | Path, box: Box | None = None
    ) -> list[Explanation]:
        """Pictures of why each hit matched ``query`` (a file or encoded bytes, searched with ``box``): the hit
        under a similarity heat map, the best-matching part boxed (:func:`indexer.explain.explain_hits`)."""
        source = str(Path(query).expanduser().resolve()) if isinstance(query, (str, Path)) else query
        return explain_hits(
            self._get_embedder(), source, hits, out_dir, box=box, masker=self._get_masker(), max_pixels=self.max_pixels
        )

    def search_ids(
        self,
        ids: Sequence[int],
        k: int = 10,
        threshold: float | None = None,
        rerank: RerankSettings | str | None = None,
    ) -> list[QueryResult]:
        """ "More like this": the nearest neighbours of indexed images, from their stored vectors (nothing is
        decoded); an image is not among its own hits. An id with no indexed vector carries ``error``."""
        self._require_searchable()
        settings = self._rerank(rerank)
        ids = [int(i) for i in ids]
        rows = self._rows_of(ids)
        results = [QueryResult(query=rows[i][0] if i in rows else f"id {i}", rerank=settings.describe()) for i in ids]
        with self.session() as s:
            found, vecs, _ = self._cache.vectors.indexed(s, ids)
        by_id = {int(i): v for i, v in zip(found, vecs)}
        todo = [n for n, i in enumerate(ids) if i in by_id]
        for n, i in enumerate(ids):
            if i not in by_id:
                results[n].error = f"no indexed image with id {i}"
        if todo:
            q = np.stack([by_id[ids[n]] for n in todo]).astype(np.float32)
            for n, hits in zip(todo, self._hits_for_vectors(q, k + 1, threshold, settings)):
                results[n].hits = [h for h in hits if h.id != ids[n]][:k]
        return results

    def images(self, ids: Sequence[int]) -> dict[int, ImageInfo]:
        """What the collection knows of these images (unknown ids are left out)."""
        out: dict[int, ImageInfo] = {}
        with self.session() as s:
            for chunk in chunks(sorted({int(i) for i in ids}), 500):
                for r in s.scalars(select(ImageRecord).where(ImageRecord.id.in_(chunk))):
                    out[r.id] = ImageInfo(
                        r.id, r.path, r.width, r.height, r.content_hash, r.size, r.mtime_ns, r.status, r.error
                    )
        return out

    def _require_searchable(self) -> VectorIndex:
        if self.model_config is None:
            raise LookalikeError(f"the collection in {self.home} is empty; index a folder first (lookalike index DIR)")
        index = self._cache.current()
        if len(index) == 0:
            raise LookalikeError(f"the collection in {self.home} has no indexed images; index a folder first")
        return index

    def _search_sources(
        self,
        sources: Sequence[Source],
        labels: Sequence[str],
        k: int,
        threshold: float | None,
        progress: Progress | None,
        box: Box | None,
        rerank: RerankSettings | str | None = None,
    ) -> list[QueryResult]:
        """Embed ``sources`` (paths or encoded images) and search each; results labelled by ``labels``."""
        progress = progress or NullProgress()
        self._require_searchable()
        settings = self._rerank(rerank)
        results = [QueryResult(query=label, rerank=settings.describe()) for label in labels]
        vecs: dict[int, np.ndarray] = {}
        progress.start(len(sources), "queries")
        try:
            for pos, vec, error in self.embed_paths(sources, box):
                if error is not None:
                    results[pos].error = error
                else:
                    assert vec is not None
                    vecs[pos] = vec
                progress.advance(1)
        finally:
            progress.finish()
        if vecs:
            order = sorted(vecs)
            q = np.stack([vecs[i] for i in order]).astype(np.float32)
            for pos, hits in zip(order, self._hits_for_vectors(q, k, threshold, settings)):
                results[pos].hits = hits
        return results

    def _rerank(self, rerank: RerankSettings | str | None) -> RerankSettings:
        """The re-ranking a search asked for: given settings, a method name with the collection's parameters, or
        (``None``) the collection's default."""
        if isinstance(rerank, RerankSettings):
            settings = rerank
        else:
            try:
                stored = self.rerank_settings
                settings = stored if rerank is None else dataclasses.replace(stored, method=rerank)
            except ValueError as exc:
                raise SettingsError(str(exc)) from None
        return self.auto_choice(settings).apply(settings) if settings.method == "auto" else settings

    def auto_choice(self, settings: RerankSettings | None = None) -> AutoChoice:
        """What ``auto`` re-ranking chooses for this collection (``settings``: default the collection's): the
        choice kept with the collection when it was made for the current vectors (after each run that changed
        them), else made now."""
        settings = settings or self.rerank_settings
        version = self._graph.version()
        with self.session() as s:
            kept = db.get_setting(s, AUTO_CHOICE_SETTING)
        for choice in (AutoChoice.from_dict(kept) if kept is not None else None, self._auto_made):
            if choice is not None and choice.fits(settings, version):
                return choice
        self._auto_made = self._make_auto_choice(settings)  # made once per process until the vectors change
        return self._auto_made

    def _make_auto_choice(self, settings: RerankSettings, locked: bool = False) -> AutoChoice:
        """``auto``'s choice on the k-NN graph when the collection keeps one, else on a sample of its images'
        neighbour lists (:func:`~indexer.reranking.sampled_auto_choice`: no graph built for it)."""
        if self._graph.file.path.exists():
            return graph_auto_choice(self._graph.current(max(settings.graph_k, DEFAULT_K), locked=locked), settings)
        with self.session() as s:
            ids, _ = self._graph.rows(s)
        return sampled_auto_choice(self._cache.current(), ids, self._vectors_of, settings, self._graph.version())

    def _hits_for_vectors(
        self, queries: np.ndarray, k: int, threshold: float | None, rerank: RerankSettings | None = None
    ) -> list[list[SearchHit]]:
        """Query vectors ``(Q, D)``, as indexed -> each one's ``k`` best live hits, re-ranked by ``rerank``
        (default: none). Every search goes through here."""
        index = self._require_searchable()
        if queries.shape[1] != index.dim:
            raise LookalikeError(
                f"query vectors have dimension {queries.shape[1]} but the index {index.dim}; "
                "run lookalike doctor --repair"
            )
        hits = self._live_hits(index, queries, k, threshold, rerank or RerankSettings(method="none"))
        return self._best_parts(queries, hits, k, threshold) if self.object_settings.enabled else hits

    def _best_parts(
        self, queries: np.ndarray, hits: list[list[SearchHit]], k: int, threshold: float | None
    ) -> list[list[SearchHit]]:
        """Objects collections: each query's image hits merged with its best object matches, every image
        ranked by its best-matching part (an object's box, or the whole image). Re-ranking applies to the image
        vectors only; object scores are cosine similarities (of whitened vectors when the collection whitens)."""
        objects = self._objects.current()
        if not len(objects):
            return hits
        scores, ids = objects.search(queries, min(len(objects), 4 * k + 16))
        with self.session() as s:
            owner = owners(s, [int(i) for i in ids.ravel() if i >= 0])
        rows = self._rows_of([image_id for image_id, _ in owner.values()])
        out = []
        for row, image_hits in enumerate(hits):
            parts = [(h.id, h.score, None) for h in image_hits]
            for sc, i in zip(scores[row], ids[row]):
                if i >= 0 and int(i) in owner and (threshold is None or sc >= threshold):
                    parts.append((owner[int(i)][0], float(sc), owner[int(i)][1]))
            by_id = {h.id: h for h in image_hits}
            merged = []
            for image_id, sc, box in best_parts(parts):
                if image_id in by_id:
                    merged.append(dataclasses.replace(by_id[image_id], score=sc, box=box))
                elif image_id in rows and os.path.exists(rows[image_id][0]):
                    path, width, height = rows[image_id]
                    merged.append(SearchHit(image_id, path, sc, width, height, box))
            out.append(merged[:k])
        return out

    def _live_hits(
        self, index: VectorIndex, queries: np.ndarray, k: int, threshold: float | None, rerank: RerankSettings
    ) -> list[list[SearchHit]]:
        """The ``k`` best hits of each query vector ``(Q, D)`` whose files still exist: files gone from disk
        since they were indexed are left out (and forgotten by the next ``index`` run of any folder). All
        queries are searched together; only those that lost hits to missing files are searched again, wider,
        until ``k`` live hits are found or the index is exhausted."""
        out: list[list[SearchHit]] = [[] for _ in range(len(queries))]
        todo, want = list(range(len(queries))), k
        while todo:
            scores, ids = rerank_search(
                index,
                queries[todo],
                min(want, len(index)),
                rerank,
                graph=lambda k_: self._graph.current(k_),
                dba_vectors=lambda: self._dba.current(rerank),
                vectors_of=self._vectors_of,
            )
            rows = self._rows_of([int(i) for i in ids.ravel() if i >= 0])
            short = []
            for row, query in enumerate(todo):
                found = [(float(sc), int(i)) for sc, i in zip(scores[row], ids[row]) if i >= 0]
                if threshold is not None:
                    found = [(sc, i) for sc, i in found if sc >= threshold]
                hits = [
                    SearchHit(id=i, path=rows[i][0], score=sc, width=rows[i][1], height=rows[i][2])
                    for sc, i in found
                    if i in rows and os.path.exists(rows[i][0])
                ]
                out[query] = hits[:k]
                exhausted = len(found) < want or want >= len(index)
                if len(hits) < k and not exhausted:
                    short.append(query)
            todo, want = short, want * 4
        return out

    def _rows_of(self, ids: list[int]) -> dict[int, tuple[str, int | None, int | None]]:
        rows: dict[int, tuple[str, int | None, int | None]] = {}
        with self.session() as s:
            for chunk in chunks(sorted(set(ids)), 500):
                q = select(ImageRecord.id, ImageRecord.path, ImageRecord.width, ImageRecord.height)
                for r in s.execute(q.where(ImageRecord.id.in_(chunk))):
                    rows[r[0]] = (r[1], r[2], r[3])
        return rows

    # ------------------------------------------------------------------ maintenance
    def remove(self, path: str | Path, exclude: bool = True) -> int:
        """Forget an image, or every image under a folder (files on disk are not touched), and unless
        ``exclude`` is false, exclude the path from later index runs (:meth:`include` takes it back).
        Returns how many images were forgotten (nothing is excluded when none was)."""
        p = str(Path(path).expanduser().resolve())
        with write_lock(self):
            start_version = self._vector_version()
            with self.session() as s, s.begin():
                prefix = p.rstrip(os.sep) + os.sep
                ids = list(
                    s.scalars(
                        select(ImageRecord.id).where(
                            or_(ImageRecord.path == p, ImageRecord.path.startswith(prefix, autoescape=True))
                        )
                    )
                )
                gone_objects: set[int] = set()
                for chunk in chunks(ids, 500):
                    gone_objects |= self._sync.dependents.drop(s, chunk)  # type: ignore[union-attr]
                    s.execute(delete(ImageRecord).where(ImageRecord.id.in_(chunk)))
                if ids:
                    db.bump_vector_version(s)
            if ids:
                before = self._cache.version()
                self._cache.update(start_version, set(), set(ids))
                if self.object_settings.enabled:  # a whitening relearned by the update rebuilds the objects' too
                    self._objects.update(start_version, set(), gone_objects, rebuild=self._cache.version() != before)
        if ids:
            self._refresh_rerank_caches(changed=len(ids))
        if ids and exclude:
            self.exclude([p])
        return len(ids)

    def stats(self) -> Stats:
        with self.session() as s:
            counts = dict(s.execute(select(ImageRecord.status, func.count()).group_by(ImageRecord.status)).all())
            whitening = self._whitening(s)
            fallbacks = s.scalar(select(func.count()).where(ImageRecord.mask_fallback.is_not(None))) or 0
            counts_of_objects = count_objects(s)
        model = self.model_config
        state = self._cache.files.read_state()
        return Stats(
            home=str(self.home),
            database=redact_url(self.db_url),
            model=model.describe() if model else None,
            images=sum(counts.values()),
            indexed=counts.get(INDEXED, 0),
            pending=counts.get(PENDING, 0),
            errors=counts.get(ERROR, 0),
            index_kind=state.get("kind") if state else None,
            index_vectors=state.get("count") if state else None,
            dim=state.get("dim") if state and state.get("count") else None,  # no vectors, no dimension
            whitening=f"PCA {whitening.in_dim} -> {whitening.out_dim}" if whitening else None,
            mask=self.mask_settings.describe(),
            mask_fallbacks=fallbacks,
            objects=self.object_settings.describe(),
            object_vectors=counts_of_objects.objects,
            object_fallbacks=counts_of_objects.fallback_images,
        )

    def _check_objects(self, report: DoctorReport, version: int, indexed: set[int], dim: int | None) -> set[int]:
        """Doctor's check of the object index (objects collections): the file against the database, and the
        objects' rows (of an indexed image, with a well-formed vector). Reports problems; returns the images
        whose objects must be found again (the image ids of orphaned or malformed objects)."""
        redo: set[int] = set()
        object_ids: set[int] = set()
        with self.session() as s:
            for object_id, image_id, vec in s.execute(
                select(ObjectRecord.id, ObjectRecord.image_id, ObjectRecord.vector)
            ):
                object_ids.add(object_id)
                if image_id not in indexed or not well_formed(vec, dim):
                    redo.add(image_id)
        if redo:
            report.problems.append(f"the objects of {len(redo)} images are orphaned or have a malformed vector")
        report.problems.extend(self._objects.file_problems(version, object_ids))
        return redo

    def errors(self) -> list[tuple[str, str]]:
        """``(path, reason)`` of every image that could not be indexed."""
        with self.session() as s:
            return [
                (p, e or "")
                for p, e in s.execute(
                    select(ImageRecord.path, ImageRecord.error)
                    .where(ImageRecord.status == ERROR)
                    .order_by(ImageRecord.path)
                )
            ]

    def doctor(self, repair: bool = False) -> DoctorReport:
        """Check the database's integrity, and that the index file, the database and the files on disk agree.
        ``repair`` fixes what the check reports: images whose files are gone are forgotten, malformed vectors
        marked for re-embedding, the index rebuilt from the database. (A damaged database cannot be repaired in
        place: the report says how to recover.)"""
        report = DoctorReport()
        damage = self.integrity_problem()
        if damage is not None:
            report.problems.append(damage)
            report.damaged = True
            return report
        with write_lock(self) if repair else contextlib.nullcontext():
            version = self._vector_version()
            with self.session() as s:
                whitening = self._whitening(s)
                model_dim = int(db.get_setting(s, "model_dim") or 0) or None
                expected_dim = whitening.in_dim if whitening is not None else model_dim
                bad_vectors: list[int] = []
                dims: set[int] = set()
                db_ids: set[int] = set()
                missing_ids: list[int] = []
                for row_id, path, status, vec in s.execute(
                    select(ImageRecord.id, ImageRecord.path, ImageRecord.status, ImageRecord.vector)
                ):
                    if not os.path.exists(path):
                        report.missing_files.append(path)
                        missing_ids.append(row_id)
                    if status != INDEXED:
                        continue
                    if not well_formed(vec, expected_dim):
                        bad_vectors.append(row_id)
                        continue
                    dims.add(len(vec) // 2 if expected_dim and len(vec) == 2 * expected_dim else len(vec) // 4)
                    db_ids.add(row_id)
            if len(dims) > 1:
                report.problems.append(f"stored vectors have mixed dimensions {sorted(dims)}")
            if bad_vectors:
                report.problems.append(f"{len(bad_vectors)} indexed images have a missing or malformed vector")
            report.problems.extend(self._cache.file_problems(version, db_ids))
            if report.missing_files:
                report.problems.append(f"{len(report.missing_files)} indexed files no longer exist on disk")
            objects_on = self.object_settings.enabled
            redo_objects: set[int] = set()  # images whose objects are orphaned or malformed
            if objects_on:
                redo_objects = self._check_objects(report, version, db_ids, expected_dim)
            # the k-NN graph and the DBA vectors, caches like the index (optional: no file is no problem)
            checked = [(c, c.check()) for c in (self._graph, self._dba)]
            caches = [c for c, problem in checked if problem is not None]
            report.problems.extend(problem for _, problem in checked if problem is not None)
            if not repair or report.ok:
                return report
            with self.session() as s, s.begin():
                drop_objects = self._sync.dependents.drop  # type: ignore[union-attr]
                if redo_objects:
                    for chunk in chunks(sorted(redo_objects), 500):
                        drop_objects(s, chunk)
                        s.execute(update(ImageRecord).where(ImageRecord.id.in_(chunk)).values(status=PENDING, size=-1))
                    report.repaired.append(f"the objects of {len(redo_objects)} images dropped, to find again")
                if bad_vectors or len(dims) > 1:
                    for chunk in chunks(bad_vectors, 500):
                        s.execute(
                            update(ImageRecord)
                            .where(ImageRecord.id.in_(chunk))
                            .values(status=PENDING, vector=None, size=-1)
                        )
                    if bad_vectors:
                        report.repaired.append(
                            f"{len(bad_vectors)} images marked for re-embedding on the next index run"
                        )
                if missing_ids:
                    for chunk in chunks(missing_ids, 500):
                        drop_objects(s, chunk)
                        s.execute(delete(ImageRecord).where(ImageRecord.id.in_(chunk)))
                    report.repaired.append(f"forgot {len(missing_ids)} images whose files are gone")
                db.bump_vector_version(s)
                version = int(db.get_setting(s, db.VECTOR_VERSION, 0))
            index = self._cache.build()
            self._cache.save(index, version)
            report.repaired.append(f"rebuilt the {index.kind} index from the database ({len(index)} vectors)")
            if objects_on:
                objects = self._objects.build()
                self._objects.save(objects, version)
                report.repaired.append(f"rebuilt the object index from the database ({len(objects)} vectors)")
            for cache in caches:
                cache.file.path.unlink(missing_ok=True)
                cache.forget()
            if len(index):  # the caches kept follow the repaired database; those reported are made anew
                self._refresh_rerank_caches(self._graph in caches, self._dba in caches, locked=True)
            if caches:
                names = " and ".join(c.file.path.name for c in caches)
                report.repaired.append(f"rebuilt the re-ranking cache {names} from the database")
        return report
