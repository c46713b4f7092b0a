"""``lookalike duplicates``: copies of the same picture in the collection, grouped, with a keeper each; and
the safe actions on them (dry run unless ``--yes``), journaled and undone with ``--undo``.

A thin layer over :class:`indexer.duplicates.DuplicateFinder` and :mod:`indexer.file_actions`.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from .cli_common import TqdmProgress, library_errors, open_collection
from .duplicates import Calibration, DuplicateFinder, DuplicateReport
from .file_actions import ActionReport, apply_actions, undo


def _echo_small_copies(cal: Calibration) -> None:
    """Say so when the calibration found copies of some size clearly less often than the others."""
    overall = cal.verify_expected_recall or 0.0
    for name, got in cal.verify_recall_by_side.items():
        if got["recall"] < overall - 0.05:
            click.echo(f"  copies {name} px on their longest side: recall {got['recall']:.3f} (of {got['copies']:.0f})")


def _echo_report(report: DuplicateReport) -> None:
    cal = report.calibration
    if report.threshold is None:
        click.echo("exact copies only (same content hash)")
    elif report.verification is not None and cal is not None:
        click.echo(
            f"candidates at cosine >= {report.threshold:.4f}, verified by >= {report.verification['min_inliers']} "
            f"matching local features; calibrated for precision {cal.target_precision:.3g} on {cal.copies} edited "
            f"copies of {cal.originals} of your images: expected precision {cal.verify_expected_precision:.3f}, "
            f"recall {cal.verify_expected_recall:.3f}"
        )
        _echo_small_copies(cal)
    elif cal is not None and abs(cal.threshold - report.threshold) < 1e-9:
        click.echo(
            f"threshold {report.threshold:.4f}, calibrated for precision {cal.target_precision:.3g} on "
            f"{cal.copies} edited copies of {cal.originals} of your images: expected recall {cal.expected_recall:.3f}"
        )
        if cal.threshold_strict is not None:
            click.echo(
                f"  (--strict, near-identical shots counted as mistakes: threshold {cal.threshold_strict:.4f}, "
                f"expected recall {cal.expected_recall_strict:.3f})"
            )
    elif cal is not None and cal.threshold_strict is not None and abs(cal.threshold_strict - report.threshold) < 1e-9:
        click.echo(
            f"strict threshold {report.threshold:.4f} for precision {cal.target_precision:.3g}: expected recall "
            f"{cal.expected_recall_strict:.3f}"
        )
    else:
        click.echo(f"threshold {report.threshold:.4f} (given)")
    copies = sum(len(g.files) - 1 for g in report.groups)
    click.echo(f"{len(report.groups)} groups, {copies} copies among {report.images} images")
    if report.similar_threshold is not None:
        click.echo(
            f"{len(report.similar)} groups of similar pictures (not copies: vectors >= {report.similar_threshold:.4f}, "
            "the geometric check failed; never acted on)"
        )
    for g in report.groups + report.similar:
        click.echo()
        click.echo(f"[{g.tier}]")
        for j, f in enumerate(g.files):
            if g.similar:
                mark = "first" if j == 0 else f"{f.score:.3f}"
            else:
                mark = "keep" if f.keep else ("same" if f.exact else f"{f.score:.3f}")
            size = f" {f.width}x{f.height}" if f.width and f.height else ""
            click.echo(f"  {mark:>5}  {f.path}{size}" + ("  (reference)" if f.reference else ""))
    if report.missing:
        click.echo(
            f"\n{len(report.missing)} indexed files are gone from disk and were left out (lookalike index forgets them)",
            err=True,
        )


def _echo_actions(report: ActionReport) -> None:
    verb = {"move": "move", "hardlink": "hard-link", "trash": "trash", "undo": "undo"}[report.action]
    for r in report.results:
        if r.status == "would":
            target = f" -> {r.dest}" if r.dest else ""
            click.echo(f"would {verb}: {r.path}{target}")
        elif r.status in ("skipped", "failed"):
            click.echo(f"{r.status}: {r.path}: {r.reason}", err=True)
        elif r.status in ("done", "restored"):
            click.echo(f"{r.status}: {r.path}" + (f" -> {r.dest}" if r.dest and r.status == "done" else ""))
    if report.dry_run:
        n = report.count("would")
        click.echo(f"dry run: {n} files would be changed; add --yes to do it (undo with: lookalike duplicates --undo)")
    elif report.action == "undo":
        click.echo(f"undone: {report.count('restored')} files restored ({report.journal})")
    else:
        click.echo(f"{report.count('done')} files done, journal {report.journal} (undo: lookalike duplicates --undo)")


@click.command()
@click.argument("folder", required=False, type=click.Path(path_type=Path))
@click.option("--of", "of_file", type=click.Path(path_type=Path), help="Is this file already in the collection?")
@click.option(
    "--reference",
    type=click.Path(path_type=Path, file_okay=False),
    help="Prefer keepers from this folder; never touch it.",
)
@click.option("--threshold", type=float, help="Cosine similarity for a copy (default: the calibrated one).")
@click.option(
    "--precision",
    type=click.FloatRange(0.5, 1, max_open=True),
    help="Target precision to calibrate for (default 0.99).",
)
@click.option(
    "--strict", is_flag=True, help="Use the strict calibrated threshold (near-identical shots count as mistakes)."
)
@click.option(
    "--no-verify", is_flag=True, help="Vectors only: no geometric check of candidate pairs (faster, less precise)."
)
@click.option(
    "--similar",
    "similar",
    is_flag=True,
    help="Also list similar pictures that are not copies (bursts, the same scene shot again); never acted on.",
)
@click.option("--calibrate", is_flag=True, help="Calibrate the threshold again on edited copies of your images.")
@click.option("--exact", is_flag=True, help="Byte-identical copies only (no network, no calibration).")
@click.option(
    "-k", "k", default=16, show_default=True, type=click.IntRange(1), help="Neighbours per image in the graph."
)
@click.option(
    "--move-to", type=click.Path(path_type=Path, file_okay=False), help="Move the copies (not the keepers) here."
)
@click.option("--hardlink", is_flag=True, help="Replace byte-identical copies by hard links to the keeper.")
@click.option("--trash", is_flag=True, help="Send the copies (not the keepers) to the desktop trash.")
@click.option("--yes", is_flag=True, help="Do it; without --yes an action is a dry run.")
@click.option("--undo", "undo_", is_flag=True, help="Undo the last --move-to/--hardlink/--trash run.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@library_errors
def duplicates(
    ctx: click.Context,
    folder: Path | None,
    of_file: Path | None,
    reference: Path | None,
    threshold: float | None,
    precision: float | None,
    strict: bool,
    no_verify: bool,
    similar: bool,
    calibrate: bool,
    exact: bool,
    k: int,
    move_to: Path | None,
    hardlink: bool,
    trash: bool,
    yes: bool,
    undo_: bool,
    as_json: bool,
) -> None:
    """Find copies of the same picture in the collection (or under FOLDER), with a keeper for each group.

    \b
    Example:
      lookalike duplicates ~/Pictures                 # groups, keeper first, scores
      lookalike duplicates --of new.jpg               # is this already in the collection?
      lookalike duplicates --similar                  # also alike pictures that are not copies
      lookalike duplicates --move-to ~/dupes          # dry run: what would move
      lookalike duplicates --move-to ~/dupes --yes    # move the copies (journaled)
      lookalike duplicates --undo                     # put them back

    The threshold is calibrated on edited copies of your own images for the target precision, and stored.
    Near-identical shots (bursts) are similar, not copies: the geometric check keeps most of them out of the
    groups, and --similar lists them apart (tier "similar", every file kept, never acted on); --strict counts
    them as mistakes when calibrating the vectors-only threshold. Actions are journaled; --undo reverts them.
    """
    coll = open_collection(ctx, create=False)  # reading: never creates a collection
    actions = [a for a, on in (("move", move_to is not None), ("hardlink", hardlink), ("trash", trash)) if on]
    if len(actions) > 1:
        raise click.UsageError("choose one of --move-to, --hardlink, --trash")
    if undo_:
        if actions or of_file is not None:
            raise click.UsageError("--undo takes no other action")
        rep = undo(coll)
        click.echo(json.dumps(rep.to_dict(), indent=2)) if as_json else _echo_actions(rep)
        return
    finder = DuplicateFinder(coll)
    if calibrate:
        cal = finder.calibrate(precision=precision if precision is not None else 0.99, progress=TqdmProgress())
        if not as_json and of_file is None and folder is None and not actions:
            click.echo(
                f"threshold {cal.threshold:.4f} for precision {cal.target_precision:.3g}: expected recall "
                f"{cal.expected_recall:.3f} on {cal.copies} edited copies of {cal.originals} images (stored)"
            )
            if cal.verify_min_inliers is not None:
                click.echo(
                    f"with the geometric check (candidates >= {cal.verify_candidate_threshold:.4f}, >= "
                    f"{cal.verify_min_inliers} inliers): expected precision {cal.verify_expected_precision:.3f}, "
                    f"recall {cal.verify_expected_recall:.3f}"
                )
                _echo_small_copies(cal)
            return
    if of_file is not None:
        t, matches = finder.of(of_file, threshold, precision, k, verify=not no_verify)
        if as_json:
            payload = {
                "query": str(of_file),
                "threshold": t,
                "matches": [
                    {"path": m.path, "score": round(m.score, 6), "exact": m.exact, "id": m.id} for m in matches
                ],
            }
            click.echo(json.dumps(payload, indent=2))
        elif not matches:
            checked = " and passes the geometric check" if threshold is None and not no_verify else ""
            click.echo(f"not in the collection: no indexed image scores >= {t:.4f}{checked}")
        else:
            for m in matches:
                click.echo(f"  {'same' if m.exact else f'{m.score:.3f}':>5}  {m.path}")
        if not matches:
            ctx.exit(4)
        return
    report = finder.find(
        folder,
        threshold,
        precision,
        reference,
        exact,
        k,
        progress=TqdmProgress(),
        strict=strict,
        verify=not no_verify,
        similar=similar,
    )
    if not actions:
        click.echo(json.dumps(report.to_dict(), indent=2)) if as_json else _echo_report(report)
        return
    rep = apply_actions(coll, report.groups, actions[0], move_to=move_to, dry_run=not yes, only_under=folder)
    if as_json:
        click.echo(json.dumps({**report.to_dict(), "actions": rep.to_dict()}, indent=2))
    else:
        _echo_report(report)
        click.echo()
        _echo_actions(rep)
