"""``lookalike train-seg``: train the U-Net foreground segmenter on a folder of images and masks.

Registered on the main group by :mod:`indexer.cli` (``main.add_command(train_seg)``); a thin layer over
:func:`indexer.train_data.mask_pair_data` and :class:`segmentation.training.SegTrainer`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from retrieval.config import check_device

from .cli_common import TqdmProgress, library_errors, step_progress

if TYPE_CHECKING:
    from segmentation.data import MaskedImage

__all__ = ["train_seg"]


def _report_skipped(pair: MaskedImage, exc: Exception) -> None:
    click.echo(f"  skipped {pair.image} (mask {pair.mask}): {exc}", err=True)


@click.command("train-seg")
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Checkpoint to write (the best on validation IoU); OUT.last is the resumable latest.",
)
@click.option(
    "--val",
    "val_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A folder of validation pairs, laid out like DATA (default: hold out --val-fraction of DATA).",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.2,
    show_default=True,
    help="Share of DATA held out (seeded) for validation when --val is not given; 0: no validation.",
)
@click.option("--epochs", type=click.IntRange(1), default=12, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True, help="Images per step.")
@click.option(
    "--lr",
    type=float,
    default=1e-3,
    show_default=True,
    help="AdamW learning rate of the decoder (the encoder gets a tenth), decayed on a cosine.",
)
@click.option(
    "--image-size",
    type=click.IntRange(32),
    default=192,
    show_default=True,
    help="Side of the training squares; the segmenter resizes images so their longest side is this.",
)
@click.option(
    "--encoder-weights",
    type=click.Choice(["imagenet", "random"]),
    default="imagenet",
    show_default=True,
    help="What the EfficientNet-Lite0 encoder starts from.",
)
@click.option("--freeze-encoder", is_flag=True, help="Train only the decoder (faster, usually less accurate).")
@click.option("--no-augment", is_flag=True, help="No random crops, flips or colour jitter.")
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:N or mps (default: lookalike --device, else auto).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from OUT.last after an interruption.")
@click.pass_context
@library_errors(os_error="cannot write the checkpoint {out}: {exc}")
def train_seg(
    ctx: click.Context,
    data: Path,
    out: Path,
    val_dir: Path | None,
    val_fraction: float,
    epochs: int,
    batch_size: int,
    lr: float,
    image_size: int,
    encoder_weights: str,
    freeze_encoder: bool,
    no_augment: bool,
    device: str | None,
    seed: int,
    resume: bool,
) -> None:
    """Train the U-Net segmenter on DATA: rgb/ + figure_ground/ (Weizmann) or images/ + masks/.

    Masks are images of the same name, white (> 127) on the object. Validation IoU is printed every epoch and
    the best checkpoint kept at OUT; mask images with it through the segmenter spec unet:OUT.
    """
    from segmentation.training import SegTrainConfig, SegTrainer

    from .train_data import mask_pair_data

    runtime = ctx.obj.get("runtime") if isinstance(ctx.obj, dict) else None  # lookalike --device ...
    device = device or (runtime.device if runtime is not None else "auto")
    try:
        check_device(device)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param_hint="'--device'") from None
    cfg = SegTrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        image_size=image_size,
        encoder_weights=encoder_weights,
        freeze_encoder=freeze_encoder,
        augment=not no_augment,
        val_fraction=0.0 if val_dir is not None else val_fraction,
        seed=seed,
        device=device,
    )
    sets = mask_pair_data(
        data,
        val_folder=val_dir,
        val_fraction=val_fraction,
        seed=seed,
        image_size=image_size,
        progress=TqdmProgress(),
        on_skip=_report_skipped,
    )
    click.echo(
        f"training on {len(sets.train)} image + mask pairs"
        + (f", validating on {len(sets.val)}" if sets.val is not None else ", no validation")
        + f" ({image_size} px, {epochs} epochs)"
    )
    trainer = SegTrainer(
        cfg, out.expanduser(), on_epoch=lambda r: _print_epoch(r, epochs), on_step=step_progress(TqdmProgress())
    )
    if resume and not trainer.last.exists():
        click.echo(f"nothing to resume at {trainer.last}: training from the start", err=True)
    result = trainer.fit(sets.train, sets.val, resume=resume)
    best = (
        f"validation IoU {result.best_val_iou:.4f} at the best epoch ({result.best_epoch}); "
        if result.best_val_iou is not None
        else ""
    )
    click.echo(f"{best}checkpoint: {out} (segmenter spec unet:{out})")


def _print_epoch(r: Any, epochs: int) -> None:
    val = f", validation IoU {r.val_iou:.4f}" if r.val_iou is not None else ""
    click.echo(f"epoch {r.epoch}/{epochs}: loss {r.loss:.4f}{val} ({r.seconds:.0f}s)")
