"""``lookalike faces cluster / name / merge / split``: people found in indexed photos without enrolling them.

A thin layer over :class:`indexer.face_clusters.FaceClusters`; the commands register themselves on the ``faces``
group of :mod:`indexer.cli_faces` (which imports this module and adds :data:`COMMANDS`).
"""

from __future__ import annotations

import dataclasses

import click

from retrieval.faces.clustering import ALGORITHMS

from .cli_common import emit, face_gallery, library_errors
from .face_clusters import ClusterListing, FaceClusters


def _listing_lines(listing: ClusterListing, limit: int = 8) -> list[str]:
    lines = []
    for c in listing.clusters:
        who = c.name if c.name is not None else "(unnamed)"
        lines.append(f"cluster {c.id}: {who}, {len(c.faces)} faces")
        lines += [f"    face {f.id}  {f.path}  at {tuple(round(v) for v in f.box)}" for f in c.faces[:limit]]
        if len(c.faces) > limit:
            lines.append(f"    ... {len(c.faces) - limit} more")
    lines.append(f"{len(listing.unclustered)} faces unclustered")
    return lines


@click.command()
@click.option("--rebuild", is_flag=True, help="Cluster every face again (merges and splits are redone).")
@click.option(
    "--algorithm",
    type=click.Choice(sorted(ALGORITHMS)),
    help="Clustering algorithm (default agglomerative; kept for later runs).",
)
@click.option(
    "--threshold",
    type=click.FloatRange(-1, 1),
    help="Cosine similarity at which faces (clusters, for agglomerative) are alike (kept for later runs).",
)
@click.option("--min-size", type=click.IntRange(1), help="Smaller groups stay unclustered (kept for later runs).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@library_errors
def cluster(
    ctx: click.Context,
    rebuild: bool,
    algorithm: str | None,
    threshold: float | None,
    min_size: int | None,
    as_json: bool,
) -> None:
    """Group the faces of indexed photos (`lookalike faces index`) into people, and list them.

    Incremental: new faces join the people they look like, or form new ones; faces in small groups stay
    unclustered. Two faces of one photo are never one person.

    \b
    Example:
      lookalike faces index ~/Pictures && lookalike faces cluster
      lookalike faces name 3 alice        # cluster 3 is alice: `faces identify` knows her
    """
    clusters = FaceClusters(face_gallery(ctx))
    params = None
    if any(v is not None for v in (algorithm, threshold, min_size)):
        changes = {"algorithm": algorithm, "threshold": threshold, "min_size": min_size}
        params = dataclasses.replace(clusters.params, **{k: v for k, v in changes.items() if v is not None})
    rep = clusters.cluster(rebuild=rebuild, params=params)
    listing = clusters.listing()
    summary = (
        f"{rep.faces} faces: {rep.clusters} people, {rep.unclustered} unclustered "
        f"({rep.new_faces} new faces: {rep.joined} joined a person, {rep.new_clusters} new people; "
        f"{rep.params.algorithm} at {rep.params.threshold:.2f}, {rep.seconds:.1f} s)"
    )
    emit(as_json, listing.to_dict(), [*_listing_lines(listing), summary])


@click.command(name="name")
@click.argument("cluster_id", metavar="CLUSTER", type=int)
@click.argument("name")
@click.pass_context
@library_errors
def name_cmd(ctx: click.Context, cluster_id: int, name: str) -> None:
    """Name the person of CLUSTER: its faces are enrolled as NAME, so `faces identify` knows them.

    A name another cluster has merges the two. Example: lookalike faces name 3 alice
    """
    cid = FaceClusters(face_gallery(ctx)).name(cluster_id, name)
    click.echo(
        f"cluster {cid} is {name.strip()}" + (f" (merged with cluster {cluster_id})" if cid != cluster_id else "")
    )


@click.command()
@click.argument("into", metavar="A", type=int)
@click.argument("other", metavar="B", type=int)
@click.pass_context
@library_errors
def merge(ctx: click.Context, into: int, other: int) -> None:
    """Cluster B is the same person as cluster A: move its faces into A (A keeps its name, or takes B's).

    Example: lookalike faces merge 3 7
    """
    FaceClusters(face_gallery(ctx)).merge(into, other)
    click.echo(f"merged cluster {other} into {into}")


@click.command()
@click.argument("cluster_id", metavar="CLUSTER", type=int)
@click.argument("face_ids", metavar="[FACE_ID]...", nargs=-1, type=int)
@click.pass_context
@library_errors
def split(ctx: click.Context, cluster_id: int, face_ids: tuple[int, ...]) -> None:
    """Split CLUSTER: the faces given (ids from `faces cluster --json`) become a new cluster; with none, the
    cluster is clustered again, stricter, until groups come apart from its largest part, which keeps the id and
    name. Clusters made by split are kept by later `faces cluster` runs, however small.

    Example: lookalike faces split 3 41 42
    """
    new = FaceClusters(face_gallery(ctx)).split(cluster_id, list(face_ids) if face_ids else None)
    click.echo(f"split cluster {cluster_id}: new clusters {', '.join(map(str, new)) or 'none'}")


#: The commands the ``faces`` group adds (:mod:`indexer.cli_faces`).
COMMANDS = [cluster, name_cmd, merge, split]
