"""``lookalike faces ...``: enroll people, verify 1:1, identify 1:N, index and search faces in photos.

A thin layer over :class:`indexer.faces.FaceGallery`, registered on the main group by :mod:`indexer.cli`
(``main.add_command(faces)``); it reads the main group's ``ctx.obj`` (home, database URL, runtime options).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from .cli_common import EXIT_SKIPPED, TqdmProgress, emit, face_gallery, library_errors
from .faces import BACKENDS, UNKNOWN, Decision, FaceGallery, default_face_model
from .settings import model_config_with

#: Exit statuses of the decision commands (verify, identify, search); 1 is an error, 2 a usage error.
EXIT_SAME = 0
EXIT_DIFFERENT = 4
EXIT_NO_FACE = 5

__all__ = ["EXIT_DIFFERENT", "EXIT_NO_FACE", "EXIT_SAME", "EXIT_SKIPPED", "faces"]


def _box(box: Any) -> str:
    return "-" if box is None else "(" + ", ".join(f"{v:.0f}" for v in box) + ")"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--detector",
    help="Face detector: yunet (default for new galleries; OpenCV zoo's YuNet, 5 landmarks), haar, "
    "dlib-hog, dlib-cnn (dlib extra).",
)
@click.option(
    "--backend",
    type=click.Choice(list(BACKENDS)),
    help="Face vectors: sface (default for new galleries; OpenCV zoo's SFace, 128-d, 99.3% on LFW), "
    "lookalike (our network on aligned crops, see --weights) or dlib (dlib's 128-d ResNet descriptor, "
    "best with --detector dlib-hog).",
)
@click.option(
    "--weights",
    metavar="CKPT",
    help="lookalike backend (implied when --backend is not given): imagenet or a checkpoint from `lookalike "
    "train` (its input size becomes the crop size unless --crop-size is given).",
)
@click.option(
    "--crop-size",
    type=click.IntRange(32),
    help="lookalike backend: side of the aligned face crop fed to the network (default 160).",
)
@click.option(
    "--reembed", is_flag=True, help="Allow a detector/backend/model change on a gallery with faces: re-embed them."
)
@click.pass_context
@library_errors
def faces(
    ctx: click.Context,
    detector: str | None,
    backend: str | None,
    weights: str | None,
    crop_size: int | None,
    reembed: bool,
) -> None:
    """Face verification and search: enroll people, check who is who, find faces in photos.

    \b
      lookalike faces enroll alice a1.jpg a2.jpg     # the largest face of each photo
      lookalike faces verify probe.jpg --as alice    # exit 0 same person, 4 different, 5 no face
      lookalike faces verify a.jpg b.jpg             # two photos, same person?
      lookalike faces identify group.jpg             # every face: who is it (or unknown)
      lookalike faces index ~/Pictures               # every face of every photo (again: only changes)
      lookalike faces search probe.jpg               # indexed faces most like this one
      lookalike faces calibrate pairs.txt --far 1e-3 # choose the threshold on labelled pairs

    The gallery lives with the collection (--home / --db of `lookalike`). The detector / backend / model
    options change the gallery's settings; a change that alters the vectors of stored faces needs --reembed.
    Settings are stored with the gallery: a new one starts with yunet + sface, an existing one keeps its own.
    Decisions compare the cosine similarity of face vectors with the gallery's threshold: the backend's default
    (sface's was calibrated on LFW; the others' are rough) until `lookalike faces calibrate` sets one on your
    own labelled pairs.
    """
    obj = ctx.ensure_object(dict)

    def open_gallery(create: bool) -> FaceGallery:  # on first use: read-only commands do not create a home
        nonlocal backend, crop_size
        gallery = FaceGallery(obj.get("home"), obj.get("db_url"), runtime=obj.get("runtime"), create=create)
        model = None
        if weights is not None:
            if backend is None:
                backend = "lookalike"
            model = model_config_with(gallery.settings.model or default_face_model(crop_size or 160), weights=weights)
            if crop_size is None:
                crop_size = model.image_size
        if any(v is not None for v in (detector, backend, model, crop_size)):
            lost = gallery.configure(
                detector=detector, backend=backend, model=model, crop_size=crop_size, reembed=reembed
            )
            for path, reason in lost:
                click.echo(f"dropped the enrolled face of {path}: {reason}", err=True)
        return gallery

    obj["open_face_gallery"] = open_gallery


def _decision_lines(d: Decision, what: str) -> list[str]:
    if d.reason is not None:
        verdict = f"no decision: {d.reason}"
    else:
        verdict = (
            f"{'SAME' if d.same else 'DIFFERENT'} person{what}: similarity {d.score:.4f}, threshold {d.threshold:.4f}"
        )
    lines = [verdict]
    if d.faces > 1:
        lines.append(f"  {d.faces} faces in the photo; used the largest, at {_box(d.box)}")
    lines.append(("  calibrated: " if d.calibrated else "  default threshold: ") + d.note)
    return lines


@faces.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--as", "name", metavar="NAME", help="Compare the one IMAGE with this enrolled person.")
@click.option(
    "--mean",
    "use_mean",
    is_flag=True,
    help="With --as: score the mean similarity to the person's faces (default: the best one).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@library_errors
def verify(ctx: click.Context, images: tuple[Path, ...], name: str | None, use_mean: bool, as_json: bool) -> None:
    """Is this the same person? `verify IMAGE --as NAME` or `verify A B`.

    Prints the decision, the cosine similarity, the threshold and whether it is calibrated.

    \b
    Exit status: 0 same person, 4 different person, 5 no face found in a photo (no decision),
    1 error (unreadable photo, unknown name), 2 usage error.
    """
    gallery = face_gallery(ctx, create=name is None)
    if name is not None and len(images) != 1:
        raise click.UsageError("with --as NAME give exactly one IMAGE")
    if name is None and len(images) != 2:
        raise click.UsageError("give two images (verify A B), or one image and --as NAME")
    if name is not None:
        d = gallery.verify(images[0], name, aggregate="mean" if use_mean else "max")
    else:
        d = gallery.verify_pair(images[0], images[1])
    emit(as_json, dataclasses.asdict(d), _decision_lines(d, f" as {name}" if name else ""))
    ctx.exit(EXIT_NO_FACE if d.reason is not None else EXIT_SAME if d.same else EXIT_DIFFERENT)


@faces.command()
@click.argument("name")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@library_errors
def enroll(ctx: click.Context, name: str, images: tuple[Path, ...], as_json: bool) -> None:
    """Enroll NAME from photos (the largest face of each; several photos per person help).

    Exit status 0; 3 when some photos were skipped (unreadable, or no face found); 1 when none could be used.
    """
    gallery = face_gallery(ctx)
    rep = gallery.enroll(name, images)
    lines = [f"enrolled {len(rep.enrolled)} faces of {rep.name} ({rep.total_faces} in all)"]
    lines += [f"  {p}: {n} faces, enrolled the largest" for p, n in rep.several_faces]
    lines += [f"  {p}: already enrolled" for p in rep.duplicates]
    lines += [f"  {p}: no face found" for p in rep.no_face]
    lines += [f"  {p}: skipped, {why}" for p, why in rep.skipped]
    emit(as_json, dataclasses.asdict(rep), lines)
    if rep.total_faces == 0:
        raise click.ClickException(f"no face of {name} could be enrolled from these photos")
    if rep.no_face or rep.skipped:
        ctx.exit(EXIT_SKIPPED)


@faces.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.option("-k", "k", default=3, show_default=True, type=click.IntRange(1), help="Candidates per face.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@library_errors
def identify(ctx: click.Context, image: Path, k: int, as_json: bool) -> None:
    """Who is in IMAGE? Every face, largest first: the best enrolled identities, or unknown.

    Exit status: 0 at least one face was identified, 4 every face is unknown, 5 no face found, 1 error.
    """
    gallery = face_gallery(ctx, create=False)
    matches = gallery.identify(image, k=k)
    st = gallery.settings
    lines = [f"no face found in {image}"] if not matches else []
    for i, m in enumerate(matches, 1):
        score = "-" if m.score is None else f"{m.score:.4f}"
        lines.append(f"face {i} at {_box(m.box)}: {m.identity} (best similarity {score}, threshold {st.threshold:.4f})")
        lines += [f"    {c.score:.4f}  {c.name}" for c in m.candidates]
    if not st.calibrated:
        lines.append("default threshold: " + st.describe_threshold())
    emit(
        as_json,
        {
            "image": str(image),
            "threshold": st.threshold,
            "calibrated": st.calibrated,
            "faces": [dataclasses.asdict(m) for m in matches],
        },
        lines,
    )
    if not matches:
        ctx.exit(EXIT_NO_FACE)
    if all(m.identity == UNKNOWN for m in matches):
        ctx.exit(EXIT_DIFFERENT)


@faces.command(name="index")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@library_errors
def index_cmd(ctx: click.Context, folder: Path, as_json: bool) -> None:
    """Find every face of every photo under FOLDER, for `lookalike faces search`.

    Again later: only new and changed photos are read. Exit status 0; 3 when some files were skipped.
    """
    gallery = face_gallery(ctx)
    rep = gallery.index_folder(folder, progress=TqdmProgress())
    counts = ", ".join(
        f"{getattr(rep, n)} {n}" for n in ("new", "changed", "moved", "removed", "unchanged") if getattr(rep, n)
    )
    lines = [
        f"{rep.scanned} photos in {rep.folder}: {counts or 'nothing to do'}",
        f"read {rep.embedded} photos: {rep.faces} faces, {rep.without_faces} photos without a face"
        + (f" ({rep.faces_per_second:.1f} faces/s)" if rep.faces else ""),
        f"face index: {rep.total_indexed} faces searchable",
    ]
    lines += [f"  skipped {p}: {why}" for p, why in rep.skipped]
    payload = dataclasses.asdict(rep)
    payload["skipped"] = [{"path": p, "reason": r} for p, r in rep.skipped]
    emit(as_json, payload, lines)
    if rep.skipped:
        ctx.exit(EXIT_SKIPPED)


@faces.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1), help="Results per face.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@library_errors
def search(ctx: click.Context, image: Path, k: int, as_json: bool) -> None:
    """Faces in indexed photos most like each face in IMAGE. Exit status 5 when IMAGE holds no face."""
    gallery = face_gallery(ctx, create=False)
    found = gallery.search_faces(image, k=k)
    lines = [f"no face found in {image}"] if not found else []
    for i, q in enumerate(found, 1):
        lines.append(f"face {i} at {_box(q.box)}:")
        lines += [f"  {r:>3}  {h.score:.4f}  {h.path}  {_box(h.box)}" for r, h in enumerate(q.hits, 1)]
    emit(as_json, [dataclasses.asdict(q) for q in found], lines)
    if not found:
        ctx.exit(EXIT_NO_FACE)


def _pairs_root(pairs: Path, root: Path | None) -> Path:
    return root if root is not None else pairs.resolve().parent


@faces.command()
@click.argument("pairs", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--root",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder holding NAME/NAME_0001.jpg (default: the pairs file's folder).",
)
@click.option(
    "--far",
    default=1e-3,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="False-accept rate the threshold must keep on the different-person pairs.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@library_errors
def calibrate(ctx: click.Context, pairs: Path, root: Path | None, far: float, as_json: bool) -> None:
    """Choose the decision threshold on labelled PAIRS (LFW format) for a false-accept rate, and keep it."""
    gallery = face_gallery(ctx)
    rep = gallery.calibrate(pairs, _pairs_root(pairs, root), far=far)
    c = rep.settings.calibration
    assert c is not None
    lines = [
        (
            f"threshold {c.threshold:.4f}: TAR {c.tar:.4f} at FAR {c.far:.5f} (asked {far:g}) "
            f"on {c.same} same / {c.different} different pairs, {rep.settings.describe()}"
        )
    ]
    if rep.warning:
        lines.append("warning: " + rep.warning)
    lines += [f"  left out {p}: {why}" for p, why in rep.skipped]
    emit(
        as_json,
        {
            "calibration": dataclasses.asdict(c),
            "pairs": rep.pairs,
            "warning": rep.warning,
            "skipped": [{"path": p, "reason": r} for p, r in rep.skipped],
        },
        lines,
    )


@faces.command(name="eval")
@click.argument("pairs", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--root",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder holding NAME/NAME_0001.jpg (default: the pairs file's folder).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@library_errors
def evaluate(ctx: click.Context, pairs: Path, root: Path | None, as_json: bool) -> None:
    """Verification accuracy of the gallery's face pipeline on PAIRS (LFW protocol, as `lookalike eval --pairs`)."""
    gallery = face_gallery(ctx)
    rep = gallery.evaluate(pairs, _pairs_root(pairs, root))
    m = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in rep.metrics.items()}
    lines = [
        f"{rep.pairs} pairs, {rep.images} faces, {gallery.settings.describe()}",
        f"  accuracy      {m['accuracy']:.4f} ± {m['accuracy_std']:.4f} ({len(m['fold_ids'])} folds"
        + (", dealt: the file has none of its own)" if m.get("folds_dealt") else ")"),
    ]
    lines += [
        f"  {label:<13} {m[key]:.4f}"
        for label, key in (("ROC AUC", "auc"), ("TAR@FAR=1e-3", "tar@far=1e-3"), ("TAR@FAR=1e-2", "tar@far=1e-2"))
    ]
    lines.append(f"  left out {len(rep.skipped)} images (unreadable or no face)" if rep.skipped else "")
    emit(
        as_json,
        {
            "settings": gallery.settings.to_dict(),
            "pairs": rep.pairs,
            "images": rep.images,
            "metrics": m,
            "skipped": [{"path": p, "reason": r} for p, r in rep.skipped],
        },
        [x for x in lines if x],
    )


@faces.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@library_errors
def list_cmd(ctx: click.Context, as_json: bool) -> None:
    """The enrolled people, and the gallery's settings."""
    gallery = face_gallery(ctx, create=False)
    people = gallery.identities()
    st = gallery.stats()
    lines = [f"{p.faces:>4}  {p.name}" for p in people] or ["nobody is enrolled yet"]
    lines += [
        f"model:     {st['model']}",
        f"threshold: {st['threshold_note']}",
        f"indexed:   {st['indexed_faces']} faces in {st['photos']} photos",
    ]
    emit(as_json, {**st, "people": [{"name": p.name, "faces": p.faces} for p in people]}, lines)


@faces.command()
@click.argument("name")
@click.pass_context
@library_errors
def forget(ctx: click.Context, name: str) -> None:
    """Remove NAME and their enrolled faces from the gallery (photos on disk are not touched)."""
    gallery = face_gallery(ctx)
    n = gallery.forget(name)
    click.echo(f"forgot {name} ({n} faces)")


from .cli_face_clusters import COMMANDS as _CLUSTER_COMMANDS  # noqa: E402  (faces cluster / name / merge / split)

for _command in _CLUSTER_COMMANDS:
    faces.add_command(_command)
