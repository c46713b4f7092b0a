"""The ``lookalike`` command line: a thin layer over :class:`indexer.engine.Collection`.

Each command opens the API, makes one library call and prints; :func:`indexer.cli_common.library_errors`
turns library errors into one line on stderr. ``lookalike faces ...`` lives in :mod:`indexer.cli_faces`,
``lookalike train-seg`` in :mod:`indexer.cli_segmentation`.

Exit status: 0 success; 1 error (one line on stderr); 2 usage error; 3 finished, but some files were
skipped (unreadable, corrupt, not images) — they are listed, and ``lookalike stats --errors`` lists them again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from retrieval.config import RuntimeOptions
from retrieval.rerank import METHODS as RERANK_METHODS

from .cli_common import (
    EXIT_EMPTY,
    EXIT_SKIPPED,
    GlobalOptionsGroup,
    TqdmProgress,
    library_errors,
    mask_from_options,
    mask_options,
    model_from_options,
    model_options,
    open_collection,
    step_progress,
)
from .cli_duplicates import duplicates
from .cli_faces import faces
from .cli_segmentation import train_seg
from .cli_serve import serve
from .html_report import write_report
from .masking import MaskSettings
from .scan import scan_folder
from .settings import (
    build_embedder,
    build_masker,
    mask_settings_with,
    model_config_with,
    settings_with,
)
from .store import default_home
from .thumbnails import THUMBNAIL_DIR, Thumbnails

if TYPE_CHECKING:  # the engine (and torch behind it) is imported when a command opens a collection
    from .engine import Collection, QueryResult

__all__ = ["EXIT_EMPTY", "EXIT_SKIPPED", "main"]


@click.group(cls=GlobalOptionsGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="LOOKALIKE_HOME",
    help=f"Folder holding the collection (database, index). Env: LOOKALIKE_HOME. Default: {default_home()}",
)
@click.option(
    "--db",
    "db_url",
    envvar="LOOKALIKE_DB_URL",
    metavar="URL",
    help="SQLAlchemy URL of the metadata database (default: SQLite in --home). Env: LOOKALIKE_DB_URL.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option(
    "--batch-size", type=click.IntRange(1), help="Images per network batch (default: 32 on a CPU, 128 on a GPU)."
)
@click.option(
    "--workers",
    type=click.IntRange(0),
    help="Threads decoding images in parallel (0: decode between batches; default: 2 on a CPU, up to 16 on a GPU).",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16", "fp16"]),
    default="fp32",
    show_default=True,
    help="bf16 is faster on CPUs with AMX/AVX-512 and recent GPUs; fp16 on GPUs only.",
)
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.version_option(package_name="lookalike")
@click.pass_context
def main(
    ctx: click.Context,
    home: Path | None,
    db_url: str | None,
    device: str,
    batch_size: int | None,
    workers: int | None,
    precision: str,
    verbose: int,
) -> None:
    """lookalike: index a folder of images, then ask what looks like this.

    \b
      lookalike index ~/Pictures            # embed every image (again: only what changed)
      lookalike search query.jpg -k 5       # nearest neighbours, best first
      lookalike stats                       # what is in the collection

    These options may come before or after the command: `lookalike index DIR --home X` is
    `lookalike --home X index DIR`.
    """
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        runtime = RuntimeOptions(device=device, batch_size=batch_size, workers=workers, precision=precision)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param_hint="'--device'") from None
    ctx.obj = {"home": home, "db_url": db_url, "runtime": runtime}


def _memory_size(value: str | None) -> float | None:
    """``--memory-budget``: GB, or ``None`` when not given."""
    if value is None:
        return None
    from .vector_index import parse_memory_size

    try:
        return parse_memory_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
@model_options
@click.option("--whiten/--no-whiten", default=None, help="PCA-whiten vectors, learned from the collection itself.")
@click.option("--whiten-dim", type=click.IntRange(1), help="Dimension kept by the whitening (default 256).")
@click.option(
    "--whiten-shrinkage",
    type=click.FloatRange(0, 1, max_open=True),
    help="0: plain PCA-whitening; towards 1: gentler (default 0.95, see README).",
)
@click.option(
    "--index-kind",
    help="auto (exact below 50,000 images, then HNSW, IVF-PQ or IVF-PQ on disk by --memory-budget), flat, ivf, "
    "hnsw, ivfpq, ivfpq-disk, or a FAISS factory string.",
)
@click.option(
    "--memory-budget",
    callback=lambda ctx, param, value: _memory_size(value),
    metavar="SIZE",
    help="Memory the auto index kind may plan for, e.g. 8GB (stored; default half of this machine's; README, "
    "Large collections).",
)
@click.option(
    "--vector-dtype",
    type=click.Choice(["float32", "float16"]),
    help="How the database keeps the vectors written from now on (stored): float16 halves it (README, Large "
    "collections); vectors already kept are read either way.",
)
@mask_options
@click.option(
    "--objects/--no-objects",
    default=None,
    help="Also index each object found in an image (instances of the --mask segmenter's mask; a grid of windows "
    "without one), so a search finds images by their best-matching part (stored; switching re-embeds).",
)
@click.option(
    "--reembed", is_flag=True, help="Re-embed everything when the model or mask options differ from the collection's."
)
@click.option(
    "--exclude",
    multiple=True,
    metavar="PATTERN",
    help="Leave out, now and in every later run, a file or folder path, a path with wildcards, or a name "
    "pattern matched against file and folder names (*.gif, thumbnails). Stored with the collection.",
)
@click.option(
    "--include", multiple=True, metavar="PATTERN", help="Drop an exclusion (as it was given), so its files are indexed."
)
@click.option(
    "--rerank",
    type=click.Choice(RERANK_METHODS),
    help="The collection's default re-ranking of search results (stored; see README, Re-ranking).",
)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="local",
    metavar="[ADDRESS]",
    help="Embed on a Ray cluster: alone (or 'local') starts Ray here, 'auto' joins the cluster `ray start` made "
    "here, HOST:6379 or ray://HOST:10001 a remote one. Every node must read FOLDER at the same path.",
)
@click.option("--ray-actors", type=click.IntRange(1), help="Model actors on Ray (default: one per GPU, else by CPUs).")
@click.pass_context
@library_errors
def index(
    ctx: click.Context,
    folder: Path,
    backbone: str | None,
    weights: str | None,
    pooling: str | None,
    image_size: int | None,
    scales: tuple[float, ...] | None,
    whiten: bool | None,
    whiten_dim: int | None,
    whiten_shrinkage: float | None,
    index_kind: str | None,
    memory_budget: float | None,
    vector_dtype: str | None,
    mask_spec: str | None,
    mask_apply: str | None,
    objects: bool | None,
    reembed: bool,
    exclude: tuple[str, ...],
    include: tuple[str, ...],
    rerank: str | None,
    ray_address: str | None,
    ray_actors: int | None,
) -> None:
    """Index the images in FOLDER (recursively).

    Run it again after the folder changes: only new and changed images are embedded, deleted ones are
    dropped and moved ones are recognised by their content. An interrupted run resumes where it stopped.
    With --mask, the background is masked out first, and queries are masked the same way.
    With --ray, the embedding runs on a Ray cluster (pip install -e ".[ray]"; README, Ray).
    """
    coll = open_collection(ctx)
    mask = mask_from_options(coll.mask_settings, mask_spec, mask_apply)
    model = model_from_options(
        coll.model_config, backbone=backbone, weights=weights, pooling=pooling, image_size=image_size, scales=scales
    )
    idx_cfg = None
    if index_kind or memory_budget:
        idx_cfg = settings_with(coll.index_config, kind=index_kind, memory_budget_gb=memory_budget)
    wcfg = None
    if whiten is not None or whiten_dim is not None or whiten_shrinkage is not None:
        wcfg = settings_with(coll.whitening_settings, enabled=whiten, dim=whiten_dim, shrinkage=whiten_shrinkage)
    rerank_cfg = settings_with(coll.rerank_settings, method=rerank) if rerank else None
    objects_cfg = settings_with(coll.object_settings, enabled=objects) if objects is not None else None
    coll.configure(
        model=model,
        index=idx_cfg,
        whitening=wcfg,
        reembed=reembed,
        mask=mask,
        rerank=rerank_cfg,
        objects=objects_cfg,
        vector_dtype=vector_dtype,
    )
    if include:
        coll.include(include)
    if exclude:
        coll.exclude(exclude)
    ray = None
    if ray_address is not None or ray_actors is not None:
        from .ray_runner import RayOptions

        address = None if ray_address in (None, "local") else ray_address
        ray = RayOptions(address=address, actors=ray_actors)
    report = coll.index_folder(folder, progress=TqdmProgress(), ray=ray)
    if report.scanned == 0:
        _report_empty_folder(ctx, coll, report)
    parts = [f"{report.scanned} images in {report.folder}", f"{report.embedded} embedded"]
    for name in ("new", "changed", "moved", "removed", "resumed"):
        if getattr(report, name):
            parts.append(f"{getattr(report, name)} {name}")
    parts.append(f"{report.unchanged} unchanged")
    click.echo(", ".join(parts))
    if report.embedded:
        where = " on Ray" if ray else (f" on {coll.embedding_device}" if coll.embedding_device else "")
        click.echo(f"embedding: {report.embed_seconds:.1f}s, {report.images_per_second:.1f} images/s{where}")
    if report.mask_fallbacks:
        click.echo(
            f"{report.mask_fallbacks} images had no usable mask (empty or covering everything) and were embedded whole"
        )
    click.echo(f"collection: {report.total_indexed} images searchable ({report.index_kind} index), in {coll.home}")
    _warn_whitening_not_learned(coll)
    if report.ignored:
        click.echo(f"ignored {report.ignored} files that are not images (by extension)")
    if report.excluded:
        patterns = ", ".join(coll.exclusions.patterns)
        click.echo(f"left out {report.excluded} excluded images (exclusions: {patterns}; --include PATTERN drops one)")
    if report.earlier_errors:
        click.echo(
            f"{report.earlier_errors} files could not be read in an earlier run and are unchanged "
            "(lookalike stats --errors lists them)"
        )
    if report.skipped:
        click.echo(f"skipped {len(report.skipped)} files:", err=True)
        for path, reason in report.skipped[:50]:
            click.echo(f"  {path}: {reason}", err=True)
        if len(report.skipped) > 50:
            click.echo(f"  ... and {len(report.skipped) - 50} more (lookalike stats --errors)", err=True)
        ctx.exit(EXIT_SKIPPED)


def _report_empty_folder(ctx: click.Context, coll: Any, report: Any) -> None:
    """``index`` found no image: say so (and what else is there), then exit with :data:`EXIT_EMPTY`."""
    if report.removed:
        click.echo(f"forgot {report.removed} images that are no longer there")
    click.echo(f"collection: {report.total_indexed} images searchable, in {coll.home}")
    click.echo(
        f"no images found in {report.folder} ({report.ignored} other files ignored; "
        "images are .jpg, .png, .webp, ... files, in the folder or below)",
        err=True,
    )
    ctx.exit(EXIT_EMPTY)


def _warn_whitening_not_learned(coll: Any) -> None:
    """``--whiten`` asked for, but the collection is too small to learn it from: say so at the default level."""
    ws = coll.whitening_settings
    if not ws.enabled:
        return
    st = coll.stats()
    if st.whitening is not None or not st.index_vectors or not st.dim:
        return
    kept = min(ws.dim or st.dim, st.dim)
    need = int(ws.min_vectors_per_dim * kept)
    click.echo(
        f"warning: whitening is on but not learned yet: it needs {need} images ({ws.min_vectors_per_dim:g} per "
        f"dimension kept, {kept}) and the collection has {st.index_vectors}; searching unwhitened vectors until "
        "then (index more images, or a smaller --whiten-dim)",
        err=True,
    )


def _expand_queries(queries: tuple[Path, ...]) -> list[Path]:
    """Query files, folders expanded to their images. A query that does not exist stays in the list: the
    search answers it with an error, as it does an unreadable file, and answers the others."""
    out: list[Path] = []
    for q in queries:
        if q.is_dir():
            out.extend(Path(f.path) for f in scan_folder(q).files)
        else:
            out.append(q)
    if not out:
        raise click.ClickException("no query images found in " + ", ".join(str(q) for q in queries))
    return out


def _parse_box(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> tuple[float, float, float, float] | None:
    if value is None:
        return None
    parts = value.replace(" ", "").split(",")
    try:
        x, y, w, h = (float(v) for v in parts)
    except ValueError:
        raise click.BadParameter(f"expected X,Y,W,H (four numbers, pixels), got {value!r}") from None
    if w <= 0 or h <= 0:
        raise click.BadParameter(f"the box needs a positive width and height, got {value!r}")
    return x, y, w, h


def _write_explanations(coll: Collection, results: list[QueryResult], out: Path, box: tuple | None) -> None:
    """One folder of pictures per query (only the folder itself for a single query)."""
    answered = [r for r in results if not r.error and r.hits]
    for n, r in enumerate(answered, 1):
        folder = out if len(answered) == 1 else out / f"{n:03d}-{Path(r.query).stem}"
        done = coll.explain(r.query, r.hits, folder, box=box)
        for e in done:
            if e.error:
                click.echo(f"cannot explain {e.hit_path}: {e.error}", err=True)
        click.echo(f"explained {sum(e.picture is not None for e in done)} hits of {r.query} in {folder}", err=True)


@main.command()
@click.argument("queries", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1), help="Results per query.")
@click.option(
    "--threshold",
    type=float,
    help="Only results with a score at least this (cosine similarity; re-ranked, its best hit's cosine at most).",
)
@click.option(
    "--box",
    callback=_parse_box,
    metavar="X,Y,W,H",
    help="Search by this region of the query only (pixels of the image as shown).",
)
@click.option(
    "--rerank",
    type=click.Choice(RERANK_METHODS),
    help="Re-rank the results this way (default: the collection's; see README, Re-ranking).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output: a JSON list, one object per query.")
@click.option(
    "--html",
    "html_out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write a self-contained HTML page of the results (thumbnails embedded) to this file.",
)
@click.option(
    "--explain",
    "explain_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also write, into this folder, a picture per hit showing which part of it matched the query.",
)
@click.pass_context
@library_errors
def search(
    ctx: click.Context,
    queries: tuple[Path, ...],
    k: int,
    threshold: float | None,
    box: tuple[float, float, float, float] | None,
    rerank: str | None,
    as_json: bool,
    html_out: Path | None,
    explain_dir: Path | None,
) -> None:
    """Find the images that look most like each query IMAGE (files or folders of images).

    A query that cannot be read (missing, not an image) is reported and the others answered; the exit
    status is then 3.
    """
    coll = open_collection(ctx, create=False)
    paths = _expand_queries(queries)
    results = coll.search(
        paths, k=k, threshold=threshold, progress=TqdmProgress() if len(paths) > 1 else None, box=box, rerank=rerank
    )
    if explain_dir is not None:
        _write_explanations(coll, results, explain_dir, box)
    if html_out is not None:
        thumbs = Thumbnails(Path(coll.home) / THUMBNAIL_DIR)  # the collection's cache, shared with `serve`
        click.echo(f"report: {write_report(results, html_out, thumbnails=thumbs)}", err=True)
    if as_json:
        payload = [
            {
                "query": r.query,
                "error": r.error,
                "rerank": r.rerank,
                "results": [
                    {"rank": i + 1, "path": h.path, "score": round(h.score, 6), "id": h.id}
                    | ({"box": list(h.box)} if h.box is not None else {})
                    for i, h in enumerate(r.hits)
                ],
            }
            for r in results
        ]
        click.echo(json.dumps(payload, indent=2))
    else:
        for n, r in enumerate(results):
            if n:
                click.echo()
            click.echo(f"query: {r.query}")
            if r.error:
                click.echo(f"  cannot read the query: {r.error}")
                continue
            if not r.hits:
                click.echo("  no results" + (f" with score >= {threshold}" if threshold is not None else ""))
            for i, h in enumerate(r.hits):
                part = f"  (box {','.join(map(str, h.box))})" if h.box is not None else ""
                click.echo(f"  {i + 1:>3}  {h.score:.4f}  {h.path}{part}")
    if any(r.error for r in results):
        ctx.exit(EXIT_SKIPPED)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--errors", "show_errors", is_flag=True, help="Also list the files that could not be indexed, and why.")
@click.pass_context
@library_errors
def stats(ctx: click.Context, as_json: bool, show_errors: bool) -> None:
    """Show what the collection holds."""
    coll = open_collection(ctx, create=False)
    st = coll.stats()
    errors = coll.errors() if show_errors else []
    if as_json:
        d = dataclasses.asdict(st)
        if show_errors:
            d["error_files"] = [{"path": p, "reason": r} for p, r in errors]
        click.echo(json.dumps(d, indent=2))
        return
    click.echo(f"home:      {st.home}")
    click.echo(f"database:  {st.database}")
    click.echo(f"model:     {st.model or '(none yet)'}")
    click.echo(f"images:    {st.images} ({st.indexed} indexed, {st.pending} pending, {st.errors} could not be read)")
    vectors = f"{st.index_vectors} vectors of dimension {st.dim}" if st.index_vectors else "no vectors yet"
    click.echo(f"index:     {st.index_kind or '(none)'}, {vectors}")
    click.echo(f"whitening: {st.whitening or 'off'}")
    click.echo(
        f"masking:   {st.mask}"
        + (f" ({st.mask_fallbacks} images embedded whole: no usable mask)" if st.mask_fallbacks else "")
    )
    click.echo(
        f"objects:   {st.objects}"
        + (f", {st.object_vectors} object vectors" if st.objects != "whole images only" else "")
        + (f" ({st.object_fallbacks} images: nothing found, grid windows)" if st.object_fallbacks else "")
    )
    for path, reason in errors:
        click.echo(f"  {path}: {reason}")


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.pass_context
@library_errors
def remove(ctx: click.Context, paths: tuple[Path, ...]) -> None:
    """Forget images (a file, or every image under a folder) and exclude them from later index runs.

    Files on disk are not touched. `lookalike index DIR --include PATH` takes them back.
    """
    coll = open_collection(ctx, create=False)
    total = sum(coll.remove(p) for p in paths)
    if total == 0:
        raise click.ClickException("nothing in the collection matches " + ", ".join(str(p) for p in paths))
    excluded = ", ".join(str(p.expanduser().resolve()) for p in paths)
    click.echo(f"removed {total} images from the collection (files on disk untouched)")
    click.echo(f"excluded from later index runs: {excluded} (lookalike index DIR --include PATH takes them back)")


@main.command()
@click.option(
    "--repair",
    is_flag=True,
    help="Fix what the check reports: forget images whose files are gone, rebuild the index from the database.",
)
@click.pass_context
@library_errors
def doctor(ctx: click.Context, repair: bool) -> None:
    """Check the database, and that the index, the database and the files on disk agree."""
    coll = open_collection(ctx, create=False)
    rep = coll.doctor(repair=repair)
    if rep.ok:
        click.echo("ok: the index and the database agree")
        return
    for p in rep.problems:
        click.echo(f"problem: {p}")
    for path in rep.missing_files[:20]:
        click.echo(f"  missing: {path}")
    for r in rep.repaired:
        click.echo(f"repaired: {r}")
    if not repair and not rep.damaged:
        click.echo("run `lookalike doctor --repair` to fix these")
    if not repair or rep.damaged:
        ctx.exit(1)


@main.command(name="eval")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@model_options
@click.option(
    "--pairs",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A pairs file in the LFW format (images under FOLDER): verification accuracy, ROC AUC, TAR@FAR.",
)
@click.option(
    "--queries",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A labelled folder of queries searched against FOLDER (default: each image of FOLDER against the rest).",
)
@click.option(
    "--label-regex",
    metavar="REGEX",
    help=r"Labels from file names (first group), e.g. 'obj(\d+)__'; default: one sub-folder per class.",
)
@mask_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@library_errors
def evaluate(
    ctx: click.Context,
    folder: Path,
    backbone: str | None,
    weights: str | None,
    pooling: str | None,
    image_size: int | None,
    scales: tuple[float, ...] | None,
    pairs: Path | None,
    queries: Path | None,
    label_regex: str | None,
    mask_spec: str | None,
    mask_apply: str | None,
    as_json: bool,
) -> None:
    """Measure retrieval quality on a labelled FOLDER: mAP, recall@1/5/10, precision@k.

    Same label = relevant. Needs no collection: the images are embedded with the model options given.
    With --pairs, measure verification instead (LFW protocol: the threshold of each fold is chosen on the
    other folds).
    """
    from .evaluate import evaluate_folder, evaluate_pairs

    runtime: RuntimeOptions = ctx.obj["runtime"]
    model = model_config_with(
        None, backbone=backbone, weights=weights, pooling=pooling, image_size=image_size, scales=scales
    )
    mask = mask_settings_with(MaskSettings(), mask_spec, mask_apply)
    masker = build_masker(mask)
    if pairs is not None:
        prep = evaluate_pairs(
            pairs,
            folder,
            build_embedder(model, runtime),
            batch_size=runtime.batch_size,
            workers=runtime.workers,
            masker=masker,
        )
        m = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in prep.metrics.items()}
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "model": model.to_dict(),
                        "pairs": prep.pairs,
                        "images": prep.images,
                        "metrics": m,
                        "skipped": [{"path": p, "reason": r} for p, r in prep.skipped],
                    },
                    indent=2,
                )
            )
        else:
            click.echo(f"{prep.pairs} pairs, {prep.images} images, {model.describe()}")
            click.echo(
                f"  accuracy      {m['accuracy']:.4f} ± {m['accuracy_std']:.4f} (over {len(m['fold_ids'])} folds"
                + (", dealt: the file has none of its own)" if m.get("folds_dealt") else ")")
            )
            click.echo(f"  ROC AUC       {m['auc']:.4f}")
            click.echo(f"  TAR@FAR=1e-3  {m['tar@far=1e-3']:.4f}")
            click.echo(f"  TAR@FAR=1e-2  {m['tar@far=1e-2']:.4f}")
            for path, reason in prep.skipped:
                click.echo(f"  skipped {path}: {reason}", err=True)
        if prep.skipped:
            ctx.exit(EXIT_SKIPPED)
        return
    rep = evaluate_folder(
        folder,
        build_embedder(model, runtime),
        queries=queries,
        label_regex=label_regex,
        batch_size=runtime.batch_size,
        workers=runtime.workers,
        masker=masker,
    )
    if as_json:
        click.echo(
            json.dumps(
                {
                    "model": model.to_dict(),
                    "mask": mask.to_dict(),
                    "images": rep.images,
                    "classes": rep.classes,
                    "metrics": rep.metrics,
                    "skipped": [{"path": p, "reason": r} for p, r in rep.skipped],
                },
                indent=2,
            )
        )
    else:
        click.echo(f"{rep.images} images, {rep.classes} classes, {model.describe()}, {mask.describe()}")
        for name, value in rep.metrics.items():
            if name != "queries":
                click.echo(f"  {name:<13} {value:.4f}")
        for path, reason in rep.skipped:
            click.echo(f"  skipped {path}: {reason}", err=True)
    if rep.skipped:
        ctx.exit(EXIT_SKIPPED)


@main.command()
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Checkpoint to write (the best on validation); OUT.last is the resumable latest.",
)
@click.option("--loss", type=click.Choice(["triplet", "contrastive"]), default="triplet", show_default=True)
@click.option("--margin", type=float, help="Loss margin (default 0.2 triplet, 0.7 contrastive).")
@click.option(
    "--strategy",
    type=click.Choice(["semihard", "hard", "all"]),
    default="semihard",
    show_default=True,
    help="Triplet mining inside each batch.",
)
@click.option("--epochs", type=click.IntRange(1), default=10, show_default=True)
@click.option("--lr", type=float, default=1e-4, show_default=True, help="AdamW learning rate.")
@click.option(
    "--images-per-class",
    type=click.IntRange(2),
    default=4,
    show_default=True,
    help="Triplet batches: this many images of each class.",
)
@click.option(
    "--negatives",
    type=click.IntRange(1),
    default=5,
    show_default=True,
    help="Contrastive: hard negatives mined per query (refreshed every epoch).",
)
@click.option(
    "--queries-per-epoch",
    type=click.IntRange(1),
    default=500,
    show_default=True,
    help="Contrastive: training queries per epoch.",
)
@click.option(
    "--val",
    "val_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A labelled folder of validation classes (default: hold out --val-fraction of DATA's classes).",
)
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.2, show_default=True)
@click.option("--label-regex", metavar="REGEX", help="Labels from file names (first group); default: sub-folders.")
@click.option("--no-flip", is_flag=True, help="No horizontal flips in augmentation (e.g. text, logos).")
@click.option("--color-jitter", type=click.FloatRange(0), default=0.2, show_default=True)
@click.option(
    "--whitening",
    type=click.Choice(["none", "layer", "supervised"]),
    default="none",
    show_default=True,
    help="layer: a whitening layer after pooling, PCA-initialised and trained with the network; "
    "supervised: Radenović's whitening learned from matching training pairs after training.",
)
@click.option("--whitening-dim", type=click.IntRange(1), help="Output size of the whitening (default: all).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from OUT.last after an interruption.")
@model_options
@click.pass_context
@library_errors
def train(
    ctx: click.Context,
    data: Path,
    out: Path,
    loss: str,
    margin: float | None,
    strategy: str,
    epochs: int,
    lr: float,
    images_per_class: int,
    negatives: int,
    queries_per_epoch: int,
    val_dir: Path | None,
    val_fraction: float,
    label_regex: str | None,
    no_flip: bool,
    color_jitter: float,
    whitening: str,
    whitening_dim: int | None,
    seed: int,
    resume: bool,
    backbone: str | None,
    weights: str | None,
    pooling: str | None,
    image_size: int | None,
    scales: tuple[float, ...] | None,
) -> None:
    """Train the embedding network on DATA (one sub-folder per class, or --label-regex).

    Images of a class are pulled together and other classes pushed apart. Validation mAP on held-out classes
    is printed every epoch; the best checkpoint is kept. Use it with `lookalike index DIR --weights OUT`.
    """
    from retrieval.training import TrainConfig, Trainer

    from .train_data import training_data

    runtime: RuntimeOptions = ctx.obj["runtime"]
    model = model_config_with(
        None, backbone=backbone, weights=weights, pooling=pooling, image_size=image_size, scales=scales
    )
    cfg = TrainConfig(
        loss=loss,
        margin=margin,
        triplet_strategy=strategy,
        epochs=epochs,
        batch_size=runtime.batch_size or TrainConfig.batch_size,
        images_per_class=images_per_class,
        lr=lr,
        queries_per_epoch=queries_per_epoch,
        negatives_per_query=negatives,
        flip=not no_flip,
        color_jitter=color_jitter,
        seed=seed,
        device=runtime.device,
        whitening=whitening,
        whitening_dim=whitening_dim,
    )
    sets = training_data(
        data,
        val_folder=val_dir,
        label_regex=label_regex,
        val_fraction=val_fraction,
        seed=seed,
        max_side=model.image_size,
        workers=runtime.workers,
        progress=TqdmProgress(),
    )
    train_set, val_set = sets.train, sets.val
    click.echo(
        f"training on {len(train_set)} images of {len(set(train_set.labels.tolist()))} classes"
        + (
            f", validating on {len(val_set)} images of {len(set(val_set.labels.tolist()))} other classes"
            if val_set is not None
            else ", no validation"
        )
    )
    for path, reason in sets.skipped:
        click.echo(f"  skipped {path}: {reason}", err=True)

    def on_epoch(r: Any) -> None:
        val = f", validation mAP {r.val_map:.4f}" if r.val_map is not None else ""
        click.echo(f"epoch {r.epoch}/{epochs}: loss {r.loss:.4f}{val} ({r.seconds:.0f}s)")

    on_step = step_progress(TqdmProgress(unit="step", leave=False))
    result = Trainer(model, cfg, out, on_epoch=on_epoch, on_step=on_step).fit(train_set, val_set, resume=resume)
    if result.initial_val_map is not None:
        click.echo(
            f"validation mAP: {result.initial_val_map:.4f} before training, {result.best_val_map:.4f} "
            f"at the best epoch ({result.best_epoch}); checkpoint: {out}"
        )
        if result.whitened_val_map is not None:
            click.echo(
                f"validation mAP with supervised whitening: {result.whitened_val_map:.4f} (kept in the checkpoint)"
            )
    else:
        click.echo(f"checkpoint: {out}")


@main.command()
def models() -> None:
    """List the backbones, poolings and segmenters that can be used."""
    # importing the segmentation package registers the segmenters
    from retrieval.backbones import BACKBONES
    from retrieval.pooling import POOLINGS
    from segmentation import SEGMENTERS

    click.echo(
        "backbones: " + ", ".join(BACKBONES.names()) + "  (default efficientnet_lite0, ImageNet weights bundled)"
    )
    click.echo("poolings:  " + ", ".join(POOLINGS.names()) + "  (default gem)")
    click.echo(
        "segmenters (--mask): "
        + ", ".join(SEGMENTERS.names())
        + "  (--mask alone: foreground, packaged; unet:CHECKPOINT from `lookalike train-seg`)"
    )
    from .settings import describe_devices

    for line in describe_devices():
        click.echo(line)


main.add_command(train_seg)
main.add_command(faces)
main.add_command(duplicates)
main.add_command(serve)

if __name__ == "__main__":
    main()
