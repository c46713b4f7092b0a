"""A reproducible benchmark set of COIL-20 objects pasted onto shared, cluttered real backgrounds.

Purpose: measure whether masking out the background before embedding makes queries match *objects* rather than
*surroundings*. Whole-image retrieval is misled on purpose: every background patch is reused under many different
objects, and a query's true matches never share its background.

Protocol (query/database split; score with ``lookalike eval OUT/images/database --queries OUT/images/queries``):

- Objects: COIL-20 (../shared/data/coil-20/coil-20-proc, Nene, Nayar & Murase 1996; 20 objects x 72 poses, 128x128
  grey PNGs on black). An object's true mask is ``intensity > 12`` (the black background of the processed set is
  noise at 0-9 with a halo at 3-8 around some objects, while object pixels run continuously from 10 upwards;
  12 sits just above the noise), cleaned by a 3x3 opening, keeping the connected components of at least 5% of
  the largest one's area (detached parts survive, specks do not), a 5x5 closing, and every enclosed hole
  filled: COIL's dark object parts (car windows and cockpits, print on the piggy bank and the boxes) are as
  black as the background, and far outnumber the true see-through holes (the cup's handle, obj18 in some
  poses), whose black gap is therefore pasted as part of the object.
- Poses: ``poses`` per object (default 6), evenly spread over the 360 degrees of the turntable with a seeded offset
  per object; ``query_poses`` of them (default 2, spread apart) are queries, the rest (4) database poses.
- Backgrounds: ``backgrounds`` (default 20) square patches cut from different Weizmann horse photos
  (../shared/data/weizmann-horse/weizmann_horse_db/rgb, Borenstein & Ullman 2002), resized to ``size`` (256).
  Patches *mostly avoid the horse*: the largest square (tried from the full short side down to half of it, at
  seeded positions) where at most ``max_horse`` (10%) of the pixels are horse by ``figure_ground/``. Horses are
  avoided rather than accepted as clutter because a horse in every background would make the backgrounds alike
  (weakening the very cue we want to mislead with) and compete with the pasted object as the salient foreground.
  The horse fraction of each patch is in the manifest. ``min_horse`` asks for the opposite, patches that keep a
  part of their horse (a second salient thing, as ``benchmarks/bench_default_segmenter.py`` does), and
  ``photos="test"`` / ``"train"`` draws from one side of the fixed Weizmann split only.
- Placement: every database pose is pasted onto ``db_backgrounds_per_pose`` (4) backgrounds and every query pose
  onto ``query_backgrounds_per_pose`` (2), each time at a seeded position and scale: the object's bounding box
  covers ``min_cover``-``max_cover`` (10-40%) of the image area (scale also capped so the box fits), the object
  stays grey (pasted through its mask, bilinear resize), the background is the colour.
- Background sharing, a cyclic Latin square: objects sit in a seeded order and backgrounds in a seeded order;
  object ``i`` uses background ``(i + j) mod B`` for its slot ``j``; its first slots are its database images and
  its last ones its queries. With the defaults (4x4 + 2x2 = 20 slots = 20 backgrounds) every object sits on every
  background exactly once, and every background carries 16 database images and 4 queries, all of different
  objects. So a query's 16 relevant database images are all on *other* backgrounds, in *other* poses, while 16
  database distractors show *its exact background* patch under other objects.
- Relevance: same object (the ``obj<O>`` sub-folder). Metrics: mAP, recall@k, precision@k of queries vs database.
  "Does masking help" = mAP with the mask (oracle masks: ``masks/``; a segmenter: its masks) minus whole-image
  mAP; ``benchmarks/bench_composites_oracle.py`` measures both with the true masks.
  Leave-one-out over one folder is *not* the protocol: the same pose appears on several backgrounds, so a
  leave-one-out query would find its own pose on another background, an easy match that hides the background
  effect.

Defaults: 20 objects x (4 database poses x 4 backgrounds + 2 query poses x 2 backgrounds) = 320 database images +
80 queries = 400 RGB 256x256 JPEGs (quality 95) with their PNG masks, about 15 MB, built in seconds; embedding them
takes about a minute on 2 shared CPU cores. Measured with the default model (Lite0 + GeM, 224 px), seed 0: mAP
0.241 whole image (``lookalike eval``; the query's own background is the top-1 result for 88% of queries) vs 0.736
with the true masks (``benchmarks/bench_composites_oracle.py``); seed 1: 0.226 vs 0.748.

Layout of ``OUT``::

    images/database/obj<O>/obj<O>__<pose>_bg<BB>.jpg     masks/database/obj<O>/obj<O>__<pose>_bg<BB>.png  (white = object)
    images/queries/obj<O>/...                            masks/queries/obj<O>/...
    manifest.json                                        configuration, sources, backgrounds (photo, crop, horse
                                                         fraction), and per image: split, object, pose, background,
                                                         position, size, scale, bbox/mask cover

The same seed and sources give byte-identical files (no timestamps, fixed encoder settings).

    python -m benchmarks.composites benchmarks/results/composites              # the default set, seed 0
    python -m benchmarks.composites OUT --seed 1 --objects 1,2,3 --poses 4 --query-poses 1 \\
        --backgrounds 8 --db-backgrounds-per-pose 3 --query-backgrounds-per-pose 2
    lookalike eval OUT/images/database --queries OUT/images/queries --json     # whole-image baseline
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.common import BenchParser, require_dataset
from benchmarks.shared_data import COIL20, WEIZMANN
from indexer.imageio import load_image
from segmentation.composites import COIL_POSES, coil_path
from segmentation.composites import coil_object_mask as object_mask
from segmentation.data import MaskedImage, load_mask, split_pairs

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class CompositeConfig:
    """Everything that decides the set's content (with the seed and the source files)."""

    seed: int = 0
    objects: tuple[int, ...] = tuple(range(1, 21))
    poses: int = 6
    query_poses: int = 2
    backgrounds: int = 20
    db_backgrounds_per_pose: int = 4
    query_backgrounds_per_pose: int = 2
    size: int = 256
    min_cover: float = 0.10
    max_cover: float = 0.40
    threshold: int = 12
    min_component_ratio: float = 0.05
    close_size: int = 5
    max_hole_fraction: float = 1.0
    max_horse: float = 0.10
    #: At least this share of a background patch is horse (0: no minimum): backgrounds that hold a second
    #: salient thing, the failure mode of salient-object segmenters.
    min_horse: float = 0.0
    #: Which background photos: "all", or the "train" / "test" part of ``segmentation.data.split_pairs``
    #: (the Weizmann held-out split: every 4th photo by name is a test photo).
    photos: str = "all"
    min_patch_side: int = 128
    image_format: str = "jpg"
    jpeg_quality: int = 95

    @property
    def slots_per_object(self) -> int:
        return (
            self.poses - self.query_poses
        ) * self.db_backgrounds_per_pose + self.query_poses * self.query_backgrounds_per_pose

    def validate(self) -> None:
        if not self.objects:
            raise ValueError("no objects chosen")
        if not 1 <= self.poses <= COIL_POSES:
            raise ValueError(f"poses must be in 1..{COIL_POSES}, got {self.poses}")
        if not 0 <= self.query_poses < self.poses:
            raise ValueError(f"query_poses must be in 0..poses-1 ({self.poses - 1}), got {self.query_poses}")
        if self.slots_per_object > self.backgrounds:
            raise ValueError(
                f"each object needs {self.slots_per_object} backgrounds (no object sits twice on one), "
                f"only {self.backgrounds} asked for: raise backgrounds or lower the per-pose counts"
            )
        if not 0 < self.min_cover <= self.max_cover <= 1:
            raise ValueError(f"need 0 < min_cover <= max_cover <= 1, got {self.min_cover}, {self.max_cover}")
        if not 0 <= self.min_horse <= self.max_horse <= 1:
            raise ValueError(f"need 0 <= min_horse <= max_horse <= 1, got {self.min_horse}, {self.max_horse}")
        if self.photos not in ("all", "train", "test"):
            raise ValueError(f"photos must be all, train or test, got {self.photos!r}")
        if self.image_format not in ("jpg", "png"):
            raise ValueError(f"image_format must be jpg or png, got {self.image_format!r}")


@dataclass(frozen=True)
class BackgroundPatch:
    """A square crop ``(x, y, side)`` of a source photo, resized to the set's image size."""

    id: int
    source: str
    x: int
    y: int
    side: int
    horse_fraction: float | None


@dataclass(frozen=True)
class CompositeRecord:
    """One composite: paths relative to the output folder; ``x, y, width, height`` = the pasted object's box."""

    image: str
    mask: str
    split: str
    object: int
    pose: int
    source: str
    background: int
    x: int
    y: int
    width: int
    height: int
    scale: float
    bbox_cover: float
    mask_cover: float


@dataclass
class Manifest:
    config: CompositeConfig
    sources: dict[str, str]
    backgrounds: list[BackgroundPatch] = field(default_factory=list)
    records: list[CompositeRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": dataclasses.asdict(self.config),
            "sources": self.sources,
            "backgrounds": [dataclasses.asdict(b) for b in self.backgrounds],
            "records": [dataclasses.asdict(r) for r in self.records],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        cfg = dict(d["config"])
        cfg["objects"] = tuple(cfg["objects"])
        return cls(
            CompositeConfig(**cfg),
            dict(d["sources"]),
            [BackgroundPatch(**b) for b in d["backgrounds"]],
            [CompositeRecord(**r) for r in d["records"]],
        )

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        return cls.from_dict(json.loads(Path(path).read_text()))


def set_folders(root: str | Path) -> tuple[Path, Path]:
    """The ``(database, queries)`` image folders of a set built into ``root``; stops with the command that
    builds one when ``root`` holds none."""
    root = Path(root)
    database, queries = root / "images" / "database", root / "images" / "queries"
    if not database.is_dir():
        raise SystemExit(f"no composites in {root}; build them: python -m benchmarks.composites {root}")
    return database, queries


def image_mask_files(root: str | Path) -> list[tuple[Path, Path]]:
    """Every composite of the set in ``root`` with its true mask file, in the manifest's (sorted) order."""
    root = Path(root)
    return [(root / r.image, root / r.mask) for r in Manifest.load(root / "manifest.json").records]


# --------------------------------------------------------------------------------------------- objects


def load_gray(path: str | Path) -> np.ndarray:
    """A COIL image as ``(H, W) uint8`` grey levels: decoded by the library (``load_image``), then its luminance
    (exact for grey files: their three channels are equal)."""
    return np.asarray(Image.fromarray(load_image(path, None).pixels).convert("L"))


def choose_poses(rng: np.random.Generator, poses: int, query_poses: int) -> tuple[list[int], list[int]]:
    """Evenly spread poses with a random offset -> (database poses, query poses), queries spread apart."""
    step = COIL_POSES / poses
    offset = int(rng.integers(0, max(1, int(step))))
    all_poses = [(offset + round(i * step)) % COIL_POSES for i in range(poses)]
    q_idx = {int((k + 0.5) * poses / query_poses) for k in range(query_poses)} if query_poses else set()
    return ([p for i, p in enumerate(all_poses) if i not in q_idx], [p for i, p in enumerate(all_poses) if i in q_idx])


# --------------------------------------------------------------------------------------------- backgrounds


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _find_mask(mask_dir: Path | None, photo: Path) -> Path | None:
    if mask_dir is None:
        return None
    for p in (mask_dir / photo.name, *(mask_dir / (photo.stem + s) for s in IMAGE_SUFFIXES)):
        if p.exists():
            return p
    return None


def cut_patch(
    rng: np.random.Generator,
    photo: np.ndarray,
    horse: np.ndarray | None,
    max_horse: float,
    min_side: int,
    tries: int = 12,
    min_horse: float = 0.0,
) -> tuple[int, int, int, float | None] | None:
    """The largest square ``(x, y, side, horse_fraction)`` of ``photo (H, W, 3)`` with at most ``max_horse``
    (and at least ``min_horse``) of ``horse (H, W) bool``, trying sides from the short side down to half of it;
    None when there is none."""
    h, w = photo.shape[:2]
    short = min(h, w)
    for frac in (1.0, 0.85, 0.7, 0.55, 0.5):
        side = int(short * frac)
        if side < min_side:
            break
        for _ in range(tries if (h, w) != (side, side) else 1):
            x = int(rng.integers(0, w - side + 1))
            y = int(rng.integers(0, h - side + 1))
            if horse is None:
                return x, y, side, None
            f = float(horse[y : y + side, x : x + side].mean())
            if min_horse <= f <= max_horse:
                return x, y, side, round(f, 4)
    return None


def load_backgrounds(
    rng: np.random.Generator, photo_dir: Path, mask_dir: Path | None, config: CompositeConfig
) -> tuple[list[BackgroundPatch], list[np.ndarray]]:
    """``config.backgrounds`` patches, one per photo, photos in seeded order -> records and ``(S, S, 3) uint8``."""
    photos = _image_files(photo_dir)
    if config.photos != "all":
        train, test = split_pairs([MaskedImage(p, p) for p in photos])
        photos = sorted(p.image for p in (train if config.photos == "train" else test))
    order = rng.permutation(len(photos))
    patches: list[BackgroundPatch] = []
    pixels: list[np.ndarray] = []
    for i in order:
        if len(patches) == config.backgrounds:
            break
        photo_path = photos[int(i)]
        photo = load_image(photo_path, None).pixels
        mpath = _find_mask(mask_dir, photo_path)
        horse = load_mask(mpath, (photo.shape[1], photo.shape[0])) if mpath is not None else None
        cut = cut_patch(rng, photo, horse, config.max_horse, config.min_patch_side, min_horse=config.min_horse)
        if cut is None:
            log.debug("no usable patch in %s", photo_path.name)
            continue
        x, y, side, frac = cut
        crop = Image.fromarray(photo[y : y + side, x : x + side]).resize(
            (config.size, config.size), Image.Resampling.BILINEAR
        )
        patches.append(BackgroundPatch(len(patches), photo_path.name, x, y, side, frac))
        pixels.append(np.asarray(crop))
    if len(patches) < config.backgrounds:
        raise ValueError(
            f"only {len(patches)} of {config.backgrounds} background patches could be cut from "
            f"{photo_dir} (photos too small or mostly horse)"
        )
    return patches, pixels


# --------------------------------------------------------------------------------------------- compositing


def paste(
    rng: np.random.Generator,
    background: np.ndarray,
    gray: np.ndarray,
    mask: np.ndarray,
    min_cover: float,
    max_cover: float,
) -> tuple[np.ndarray, np.ndarray, dict[str, float | int]]:
    """Paste the masked grey object onto ``background (S, S, 3)`` at a random position and scale.

    The object's bounding box covers a uniform ``[min_cover, max_cover]`` share of the image area (scale capped
    so that the box fits). Returns the composite ``(S, S, 3) uint8``, its object mask ``(S, S) bool`` and the
    placement.
    """
    size_h, size_w = background.shape[:2]
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    bh, bw = int(y1 - y0), int(x1 - x0)
    cover = float(rng.uniform(min_cover, max_cover))
    scale = min(float(np.sqrt(cover * size_h * size_w / (bh * bw))), size_h / bh, size_w / bw)
    oh, ow = max(1, round(bh * scale)), max(1, round(bw * scale))
    obj = np.asarray(Image.fromarray(gray[y0:y1, x0:x1]).resize((ow, oh), Image.Resampling.BILINEAR))
    m = Image.fromarray(mask[y0:y1, x0:x1].astype(np.uint8) * 255).resize((ow, oh), Image.Resampling.BILINEAR)
    om = np.asarray(m) > 127
    x = int(rng.integers(0, size_w - ow + 1))
    y = int(rng.integers(0, size_h - oh + 1))
    out = background.copy()
    full = np.zeros((size_h, size_w), dtype=bool)
    full[y : y + oh, x : x + ow] = om
    region = out[y : y + oh, x : x + ow]
    region[om] = obj[om][:, None]
    placement = {
        "x": x,
        "y": y,
        "width": ow,
        "height": oh,
        "scale": round(scale, 5),
        "bbox_cover": round(oh * ow / (size_h * size_w), 5),
        "mask_cover": round(float(full.mean()), 5),
    }
    return out, full, placement


def _save_image(pixels: np.ndarray, path: Path, config: CompositeConfig) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(pixels)
    if config.image_format == "jpg":
        img.save(path, format="JPEG", quality=config.jpeg_quality, optimize=False, subsampling=0)
    else:
        img.save(path, format="PNG", optimize=False, compress_level=6)


def _save_mask(mask: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path, format="PNG", optimize=False, compress_level=6)


def build_composites(
    out_dir: str | Path,
    seed: int = 0,
    coil_dir: str | Path | None = None,
    background_dir: str | Path | None = None,
    background_mask_dir: str | Path | None = None,
    config: CompositeConfig | None = None,
) -> Manifest:
    """Build the composite set into ``out_dir`` (see the module docstring) and return its manifest.

    ``coil_dir``: COIL-style ``obj<O>__<P>.png`` files (default: the shared COIL-20 processed set);
    ``background_dir``: the photos to cut backgrounds from (default: the Weizmann horse ``rgb/``);
    ``background_mask_dir``: masks of what to avoid in them, same stems (default: Weizmann's ``figure_ground/``
    when ``background_dir`` is defaulted too; None = no avoidance). ``seed`` overrides ``config.seed``.
    """
    config = dataclasses.replace(config or CompositeConfig(), seed=seed)
    config.validate()
    if coil_dir is None:
        coil_dir = require_dataset(COIL20)
    if background_dir is None:
        horses = require_dataset(WEIZMANN)
        background_dir = horses / "rgb"
        if background_mask_dir is None:
            background_mask_dir = horses / "figure_ground"
    coil_dir, background_dir = Path(coil_dir), Path(background_dir)
    mask_dir = Path(background_mask_dir) if background_mask_dir is not None else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("images", "masks"):
        if (out / sub).exists() and any((out / sub).iterdir()):
            raise FileExistsError(f"{out / sub} is not empty: build into a new folder")

    bg_rng = np.random.default_rng([config.seed, 0])
    patches, bg_pixels = load_backgrounds(bg_rng, background_dir, mask_dir, config)
    manifest = Manifest(
        config,
        {
            "coil": str(coil_dir),
            "backgrounds": str(background_dir),
            "background_masks": str(mask_dir) if mask_dir is not None else "",
        },
        patches,
    )

    order_rng = np.random.default_rng([config.seed, 1])
    object_order = [config.objects[int(i)] for i in order_rng.permutation(len(config.objects))]
    n_bg = config.backgrounds
    n_db_slots = (config.poses - config.query_poses) * config.db_backgrounds_per_pose
    ext = config.image_format
    for rank, obj in enumerate(object_order):
        rng = np.random.default_rng([config.seed, 2, obj])
        db_poses, q_poses = choose_poses(rng, config.poses, config.query_poses)
        start = (rank * n_bg) // len(object_order)  # spreads the cyclic offsets evenly over the backgrounds
        slot_bgs = [(start + j) % n_bg for j in range(config.slots_per_object)]
        db_bgs = [slot_bgs[j] for j in rng.permutation(n_db_slots)]
        q_bgs = [slot_bgs[n_db_slots + j] for j in rng.permutation(config.slots_per_object - n_db_slots)]
        jobs = [
            ("database", p, db_bgs[k * config.db_backgrounds_per_pose + c])
            for k, p in enumerate(db_poses)
            for c in range(config.db_backgrounds_per_pose)
        ] + [
            ("queries", p, q_bgs[k * config.query_backgrounds_per_pose + c])
            for k, p in enumerate(q_poses)
            for c in range(config.query_backgrounds_per_pose)
        ]
        for split, pose, bg in jobs:
            src = coil_path(coil_dir, obj, pose)
            gray = load_gray(src)
            mask = object_mask(
                gray, config.threshold, config.min_component_ratio, config.close_size, config.max_hole_fraction
            )
            if not mask.any():
                raise ValueError(f"{src}: no object above intensity {config.threshold}")
            pixels, full_mask, placement = paste(rng, bg_pixels[bg], gray, mask, config.min_cover, config.max_cover)
            name = f"obj{obj}__{pose}_bg{bg:02d}"
            image_rel = f"images/{split}/obj{obj}/{name}.{ext}"
            mask_rel = f"masks/{split}/obj{obj}/{name}.png"
            _save_image(pixels, out / image_rel, config)
            _save_mask(full_mask, out / mask_rel)
            manifest.records.append(CompositeRecord(image_rel, mask_rel, split, obj, pose, src.name, bg, **placement))
    manifest.records.sort(key=lambda r: r.image)
    (out / "manifest.json").write_text(json.dumps(manifest.to_dict(), indent=1, sort_keys=True) + "\n")
    log.info(
        "wrote %d composites (%d queries) to %s",
        len(manifest.records),
        sum(r.split == "queries" for r in manifest.records),
        out,
    )
    return manifest


def _int_list(text: str) -> tuple[int, ...]:
    values: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise argparse.ArgumentTypeError(f"expected e.g. 1,2,5-8, got {text!r}")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        values.extend(range(a, b + 1))
    return tuple(values)


def main(argv: list[str] | None = None) -> None:
    d = CompositeConfig()
    ap = BenchParser(__doc__, seed=0)
    ap.add_argument("out_dir", help="new (or empty) output folder")
    ap.add_argument("--objects", type=_int_list, default=d.objects, help="COIL object ids, e.g. 1-20 or 1,4,7")
    ap.add_argument("--poses", type=int, default=d.poses, help="poses per object (evenly spread)")
    ap.add_argument("--query-poses", type=int, default=d.query_poses, help="of which queries")
    ap.add_argument("--backgrounds", type=int, default=d.backgrounds, help="background patches (one per photo)")
    ap.add_argument("--db-backgrounds-per-pose", type=int, default=d.db_backgrounds_per_pose)
    ap.add_argument("--query-backgrounds-per-pose", type=int, default=d.query_backgrounds_per_pose)
    ap.add_argument("--size", type=int, default=d.size, help="side of the square composites")
    ap.add_argument("--min-cover", type=float, default=d.min_cover, help="object bounding box / image area, low")
    ap.add_argument("--max-cover", type=float, default=d.max_cover, help="... high")
    ap.add_argument("--max-horse", type=float, default=d.max_horse, help="most horse allowed in a background patch")
    ap.add_argument("--min-horse", type=float, default=d.min_horse, help="least horse in a background patch")
    ap.add_argument(
        "--photos", choices=["all", "train", "test"], default=d.photos, help="Weizmann split the backgrounds come from"
    )
    ap.add_argument(
        "--min-patch-side",
        type=int,
        default=d.min_patch_side,
        help="smallest photo square (pixels) cut for a background",
    )
    ap.add_argument("--format", dest="image_format", choices=["jpg", "png"], default=d.image_format)
    ap.add_argument("--coil-dir", help="COIL-style obj<O>__<P>.png folder (default: shared COIL-20 processed)")
    ap.add_argument("--background-dir", help="photos for backgrounds (default: shared Weizmann horses rgb/)")
    ap.add_argument(
        "--background-mask-dir", help="what to avoid in them (default with the default photos: figure_ground/)"
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = CompositeConfig(
        objects=args.objects,
        poses=args.poses,
        query_poses=args.query_poses,
        backgrounds=args.backgrounds,
        db_backgrounds_per_pose=args.db_backgrounds_per_pose,
        query_backgrounds_per_pose=args.query_backgrounds_per_pose,
        size=args.size,
        min_cover=args.min_cover,
        max_cover=args.max_cover,
        max_horse=args.max_horse,
        min_horse=args.min_horse,
        photos=args.photos,
        min_patch_side=args.min_patch_side,
        image_format=args.image_format,
    )
    manifest = build_composites(
        args.out_dir, args.seed, args.coil_dir, args.background_dir, args.background_mask_dir, config
    )
    n_q = sum(r.split == "queries" for r in manifest.records)
    print(
        json.dumps(
            {
                "out_dir": str(args.out_dir),
                "images": len(manifest.records),
                "queries": n_q,
                "database": len(manifest.records) - n_q,
                "backgrounds": len(manifest.backgrounds),
            }
        )
    )


if __name__ == "__main__":
    main()
