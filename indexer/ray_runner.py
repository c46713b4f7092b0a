"""Embedding on a Ray cluster: only *where* the pending files are embedded changes.

The driver (the process running ``lookalike index --ray``) keeps everything else: the folder scan, the sync plan
under the write lock, the small resumable commits (:class:`~indexer.sync.BatchWriter`) and the index update.
Ray Data streams the pending ``(position, path)`` files through two stages:

1. decoding tasks (CPU): read, hash, decode and resize each file, and in a masked collection compute its mask,
   with the plain pipeline's own :func:`indexer.pipeline.decoded`; an unreadable file becomes its reason (the
   tasks reserve memory, which also keeps Ray Data from fusing them into the actors: decoding stays a stage that
   any node's CPUs can take);
2. a fixed pool of model actors (``map_batches`` with a callable class): one network per actor, built from the
   collection's model settings by :func:`indexer.settings.build_embedder` as the plain path builds it, on a GPU
   when the actor holds one; same-sized images are embedded together by
   :func:`indexer.pipeline.embed_decoded` (and, in an objects collection, each image's objects found and
   embedded by :func:`indexer.objects.embed_objects`).

Results stream back to the driver (``iter_batches``), which commits them through the same writer as the plain
path. Faults: Ray Data recreates a lost actor and retries its calls (its defaults ``max_restarts=-1``,
``max_task_retries=-1``), and Ray retries decoding tasks lost with their node (``max_retries=3``); a result
that arrives twice is put once. A killed driver loses at most the batch in flight: the next run resumes the
rows left ``pending`` through the normal sync, and the writer puts by row id, so nothing is committed twice.

Every node reads the files itself: the folder must be at the same path on every node (a shared folder: NFS,
SMB, a cluster file system), and the package (with the same weights) installed on every node.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import pickle
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval.config import DEFAULT_BATCH, ModelConfig, RuntimeOptions

from .errors import LookalikeError, SettingsError
from .imageio import DEFAULT_MAX_PIXELS, LoadedImage
from .masking import Masker, MaskOutcome, MaskSettings
from .pipeline import Decoded, Embedded, decoded, embed_decoded
from .settings import build_embedder, build_masker

if TYPE_CHECKING:
    import pyarrow as pa

    from .objects import FoundObject, ObjectSettings

log = logging.getLogger(__name__)

__all__ = ["INSTALL_HINT", "RayOptions", "RayJob", "ActorPlan", "plan_actors", "require_ray", "embed_on_ray"]

INSTALL_HINT = 'pip install -e ".[ray]"'
#: Share of a CPU node's cores given to model actors when nothing is said; the rest decode.
ACTOR_CPU_SHARE = 0.75


@dataclass
class RayOptions:
    """Where and how to embed on Ray. Left ``None``, a value is chosen from the cluster's resources
    (:func:`plan_actors`)."""

    #: ``None``: start Ray on this machine (``ray.init()``); ``"auto"``: the cluster started on this machine
    #: with ``ray start``; ``"HOST:6379"`` or ``"ray://HOST:10001"``: a remote cluster. A driver already
    #: connected (``ray.init`` called before) is used as it is.
    address: str | None = None
    #: Model actors (one network each); default: one per GPU, else about 3/4 of the CPUs by ``cpus_per_actor``.
    actors: int | None = None
    #: Images per network call; default: the collection's runtime batch size, else the device's default.
    batch_size: int | None = None
    #: CPUs each actor reserves (its torch threads); default 1 on GPU actors, 2 on CPU actors (1 on small nodes).
    cpus_per_actor: float | None = None
    #: GPUs each actor reserves; default 1 when the cluster has GPUs (and the device is not ``cpu``), else 0.
    gpus_per_actor: float | None = None
    #: CPUs and memory (MB) each decoding task reserves (its batch of decoded images, full size before resizing).
    decode_cpus: float = 1.0
    decode_memory_mb: int = 256
    #: Custom Ray resources each actor needs, to keep the actors on nodes labelled with them (``{"big": 1}``).
    resources: dict[str, float] = field(default_factory=dict)
    #: A Ray started here (``address=None``): the CPUs it offers (default: this machine's) and its object store.
    local_cpus: int | None = None
    object_store_mb: int | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.actors is None or self.actors >= 1, f"actors must be at least 1, got {self.actors}"),
            (self.batch_size is None or self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}"),
            (self.cpus_per_actor is None or self.cpus_per_actor > 0, "cpus_per_actor must be positive"),
            (self.gpus_per_actor is None or self.gpus_per_actor >= 0, "gpus_per_actor must be 0 or more"),
            (self.decode_cpus > 0, f"decode_cpus must be positive, got {self.decode_cpus}"),
            (self.decode_memory_mb > 0, f"decode_memory_mb must be positive, got {self.decode_memory_mb}"),
            (self.local_cpus is None or self.local_cpus >= 1, "local_cpus must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise SettingsError(message)


@dataclass(frozen=True)
class RayJob:
    """What the actors and tasks need to embed as the collection does: its settings, nothing of its database."""

    model: ModelConfig
    runtime: RuntimeOptions
    mask: MaskSettings = MaskSettings()
    #: ``None`` or disabled: whole images only (decoding tasks never import the objects machinery)
    objects: ObjectSettings | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class ActorPlan:
    """The actor pool a run asks Ray for."""

    actors: int
    cpus: float  # per actor
    gpus: float  # per actor
    batch_size: int  # images per network call
    device: str  # the actors' torch device: "cuda", "cpu" or "mps"

    def describe(self) -> str:
        each = f"{self.cpus:g} CPU" + (f" + {self.gpus:g} GPU" if self.gpus else "")
        return f"{self.actors} model actor{'s' if self.actors != 1 else ''} ({each} each, batch {self.batch_size})"


def plan_actors(nodes: Sequence[Mapping[str, float]], options: RayOptions, runtime: RuntimeOptions) -> ActorPlan:
    """The actor pool for a cluster whose alive nodes offer ``nodes`` (each ``{"CPU": 8, "GPU": 1, ...}``):
    ``options`` as given, the rest chosen. GPU actors (one GPU, one CPU each, one actor per GPU) when the
    cluster has GPUs and ``runtime.device`` is not ``cpu``; else CPU actors taking about 3/4 of each node's
    cores (2 per actor on nodes of 4 or more), leaving the rest to decoding."""
    total_gpus = sum(n.get("GPU", 0.0) for n in nodes)
    gpus = options.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if total_gpus >= 1 and runtime.device != "cpu" else 0.0
    biggest = max((n.get("CPU", 0.0) for n in nodes), default=1.0)
    cpus = options.cpus_per_actor
    if cpus is None:
        cpus = 1.0 if gpus > 0 or biggest < 4 else 2.0
    actors = options.actors
    if actors is None:
        if gpus > 0:
            fits = sum(math.floor(n.get("GPU", 0.0) / gpus + 1e-9) for n in nodes)
        else:
            fits = sum(math.floor(n.get("CPU", 0.0) * ACTOR_CPU_SHARE / cpus + 1e-9) for n in nodes)
        actors = max(1, fits)
    device = "cuda" if gpus > 0 else ("mps" if runtime.device == "mps" else "cpu")
    batch = options.batch_size or runtime.batch_size or DEFAULT_BATCH["cuda" if device == "cuda" else "cpu"]
    return ActorPlan(actors, cpus, gpus, batch, device)


def require_ray() -> ModuleType:
    """The ``ray`` module with Ray Data, or a :class:`LookalikeError` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (the runner needs Ray Data, not only Ray Core)
    except ImportError as exc:
        raise LookalikeError(
            f"embedding on Ray needs Ray Data, which is not installed ({exc}): {INSTALL_HINT}"
        ) from None
    return ray


# ---------------------------------------------------------------------------------------------------- remote side
# These run in Ray's worker processes. Columns travel as Arrow: pixels and masks as raw bytes with their shape.


@functools.lru_cache(maxsize=4)
def _masker_for(settings: MaskSettings) -> Masker | None:
    """The collection's masker, built once per worker process (the segmenter may be a network)."""
    return build_masker(settings)


def _decode_batch(batch: pa.Table, image_size: int, max_pixels: int, mask: MaskSettings) -> pa.Table:
    """Decoding task: ``pos, path`` rows -> the decoded images (``pixels`` bytes of ``(h, w, 3)`` uint8) and
    their masks, or each unusable file's ``error``."""
    import pyarrow as pa

    positions, paths = batch.column("pos").to_pylist(), batch.column("path").to_pylist()
    cols: dict[str, list[Any]] = {k: [] for k in ("pos", "path", "error", "pixels", "h", "w", "width", "height")}
    cols.update({k: [] for k in ("content_hash", "mask", "mask_fraction", "mask_fallback")})
    for i, item in decoded(paths, image_size, workers=0, max_pixels=max_pixels, masker=_masker_for(mask)):
        cols["pos"].append(positions[i])
        cols["path"].append(paths[i])
        ok = not isinstance(item, str)
        image = item.image if ok else None  # type: ignore[union-attr]
        outcome = item.mask if ok else None  # type: ignore[union-attr]
        cols["error"].append(None if ok else item)
        cols["pixels"].append(image.pixels.tobytes() if image else None)
        cols["h"].append(image.pixels.shape[0] if image else None)
        cols["w"].append(image.pixels.shape[1] if image else None)
        cols["width"].append(image.width if image else None)
        cols["height"].append(image.height if image else None)
        cols["content_hash"].append(image.content_hash if image else None)
        has_mask = outcome is not None and outcome.mask is not None
        cols["mask"].append(np.packbits(outcome.mask).tobytes() if has_mask else None)  # type: ignore[union-attr]
        cols["mask_fraction"].append(outcome.fraction if outcome else None)
        cols["mask_fallback"].append(outcome.fallback if outcome else None)
    types = dict(pos=pa.int64(), path=pa.string(), error=pa.string(), pixels=pa.large_binary(), h=pa.int32())
    types.update(w=pa.int32(), width=pa.int32(), height=pa.int32(), content_hash=pa.string(), mask=pa.large_binary())
    types.update(mask_fraction=pa.float64(), mask_fallback=pa.string())
    return pa.table({k: pa.array(v, type=types[k]) for k, v in cols.items()})


def _decoded_of(row: dict[str, Any], masked: bool) -> Decoded:
    """A decoding task's row -> the pipeline's :class:`Decoded`."""
    h, w = row["h"], row["w"]
    pixels = np.frombuffer(row["pixels"], dtype=np.uint8).reshape(h, w, 3)
    image = LoadedImage(pixels, row["width"], row["height"], row["content_hash"])
    if not masked:
        return Decoded(image)
    mask = None
    if row["mask"] is not None:
        mask = np.unpackbits(np.frombuffer(row["mask"], dtype=np.uint8), count=h * w).reshape(h, w).astype(bool)
    return Decoded(image, MaskOutcome(mask, row["mask_fraction"], row["mask_fallback"]))


class _EmbedActor:
    """A model actor: the collection's network, built once, embedding the decoded images it is sent."""

    def __init__(self, job: RayJob, plan: ActorPlan) -> None:
        import ray

        runtime = dataclasses.replace(job.runtime, device=plan.device, batch_size=plan.batch_size, workers=0)
        self.job, self.batch_size = job, plan.batch_size
        self.embedder = build_embedder(job.model, runtime)
        self.masker = _masker_for(job.mask)
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow as pa

        rows = batch.to_pylist()
        results: dict[int, Embedded] = {}
        groups: dict[tuple[int, int], list[tuple[int, Decoded]]] = {}
        for n, row in enumerate(rows):
            if row["error"] is not None:
                results[n] = Embedded(n, error=row["error"])
            else:
                groups.setdefault((row["h"], row["w"]), []).append((n, _decoded_of(row, self.masker is not None)))
        for group in groups.values():
            for start in range(0, len(group), self.batch_size):
                for out in embed_decoded(group[start : start + self.batch_size], self.embedder, self.masker):
                    results[out.index] = out
        objects: list[bytes | None] = [None] * len(rows)
        if self.job.objects is not None and self.job.objects.enabled:
            from .objects import embed_objects

            for n, out in results.items():
                if out.error is None:
                    found = embed_objects(
                        rows[n]["path"], self.embedder, self.masker, self.job.objects, self.job.max_pixels
                    )
                    objects[n] = pickle.dumps(found)
        outs = [results[n] for n in range(len(rows))]
        return pa.table(
            {
                "pos": pa.array([r["pos"] for r in rows], pa.int64()),
                "error": pa.array([o.error for o in outs], pa.string()),
                "vector": pa.array(
                    [o.vector.astype(np.float32).tobytes() if o.vector is not None else None for o in outs],
                    pa.large_binary(),
                ),
                "width": pa.array([o.width for o in outs], pa.int32()),
                "height": pa.array([o.height for o in outs], pa.int32()),
                "content_hash": pa.array([o.content_hash for o in outs], pa.string()),
                "mask_fraction": pa.array([o.mask_fraction for o in outs], pa.float64()),
                "mask_fallback": pa.array([o.mask_fallback for o in outs], pa.string()),
                "objects": pa.array(objects, pa.large_binary()),
                "node": pa.array([self.node] * len(rows), pa.string()),
            }
        )


# ---------------------------------------------------------------------------------------------------- driver side


@contextlib.contextmanager
def _connected(ray: ModuleType, options: RayOptions) -> Iterator[None]:
    """Connected to the cluster for the block: an existing connection is used as it is; one made here
    (``ray.init``) is closed after it."""
    if ray.is_initialized():
        yield
        return
    local = options.address is None
    kwargs: dict[str, Any] = dict(address=options.address, logging_level=logging.WARNING, log_to_driver=False)
    if local:
        kwargs.update(include_dashboard=False, num_cpus=options.local_cpus)
        if options.object_store_mb:
            kwargs["object_store_memory"] = options.object_store_mb * 2**20
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = "start Ray on this machine" if local else f"connect to the Ray cluster at {options.address}"
        raise LookalikeError(f"cannot {where}: {exc}") from None
    try:
        yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _quiet_ray_data(ray: ModuleType) -> Iterator[None]:
    """No Ray Data progress bars or start-up lines while the run lasts (the caller shows its own progress)."""
    from ray.util.debug import log_once

    ctx = ray.data.DataContext.get_current()
    saved = ctx.enable_progress_bars, ctx.print_on_execution_start
    data_log = logging.getLogger("ray.data")
    level = data_log.level
    ctx.enable_progress_bars, ctx.print_on_execution_start = False, False
    log_once("ray_data_progress_manager_disabled")  # Ray Data warns once that its bars are off: they are, on purpose
    data_log.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        ctx.enable_progress_bars, ctx.print_on_execution_start = saved
        data_log.setLevel(level)


def _alive_nodes(ray: ModuleType) -> list[dict[str, float]]:
    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def _file_blocks(paths: Sequence[str], batch_size: int, blocks: int = 2000) -> list[pa.Table]:
    """The ``pos, path`` rows of ``paths`` as Arrow tables of at least ``batch_size`` rows, at most about
    ``blocks`` of them: compact in the driver (no Python object per file), and enough blocks for every node."""
    import pyarrow as pa

    table = pa.table({"pos": pa.array(range(len(paths)), pa.int64()), "path": pa.array(paths, pa.string())})
    rows = max(batch_size, math.ceil(len(paths) / blocks))
    return [table.slice(start, rows) for start in range(0, len(paths), rows)]


def _embedded_of(row: dict[str, Any]) -> Embedded:
    vector = None if row["vector"] is None else np.frombuffer(row["vector"], dtype=np.float32)
    return Embedded(
        row["pos"],
        vector,
        row["width"],
        row["height"],
        row["content_hash"],
        row["error"],
        row["mask_fraction"],
        row["mask_fallback"],
    )


def embed_on_ray(
    paths: Sequence[str], job: RayJob, options: RayOptions
) -> Iterator[tuple[Embedded, tuple[list[FoundObject], np.ndarray] | None]]:
    """Embed the files ``paths`` on Ray as ``job`` says; yields each file's :class:`Embedded` (``index``: its
    position in ``paths``) and, in an objects collection, its objects, in completion order, each file once.
    A Ray failure that its retries did not overcome is a :class:`LookalikeError`."""
    ray = require_ray()
    if not paths:
        return
    with _connected(ray, options), _quiet_ray_data(ray):
        plan = plan_actors(_alive_nodes(ray), options, job.runtime)
        log.info("embedding %d files on Ray: %s", len(paths), plan.describe())
        ds = ray.data.from_arrow(_file_blocks(paths, plan.batch_size))
        ds = ds.map_batches(
            _decode_batch,
            batch_size=plan.batch_size,
            batch_format="pyarrow",
            fn_kwargs=dict(image_size=job.model.image_size, max_pixels=job.max_pixels, mask=job.mask),
            num_cpus=options.decode_cpus,
            # Reserving memory also keeps Ray Data from fusing decoding into the actors when the CPU counts
            # match: decoding stays a stage of its own, on any node, beside the actors.
            memory=options.decode_memory_mb * 2**20,
        )
        ds = ds.map_batches(
            _EmbedActor,
            batch_size=plan.batch_size,
            batch_format="pyarrow",
            fn_constructor_kwargs=dict(job=job, plan=plan),
            compute=ray.data.ActorPoolStrategy(size=plan.actors),
            num_cpus=plan.cpus,
            num_gpus=plan.gpus or None,
            resources=dict(options.resources) or None,
        )
        seen: set[int] = set()
        nodes: Counter[str] = Counter()
        try:
            for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                for row in block.to_pylist():
                    if row["pos"] in seen:  # a retried call whose first result arrived too
                        log.warning("%s came back twice from Ray; kept once", paths[row["pos"]])
                        continue
                    seen.add(row["pos"])
                    nodes[row["node"]] += 1
                    found = pickle.loads(row["objects"]) if row["objects"] is not None else None
                    yield _embedded_of(row), found
        except ray.exceptions.RayError as exc:
            raise LookalikeError(
                f"the Ray run failed after {len(seen)} of {len(paths)} files ({exc.__class__.__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); what finished is kept, run again to resume"
            ) from exc
        log.info("embedded %d files on %d Ray nodes: %s", len(seen), len(nodes), dict(nodes))
