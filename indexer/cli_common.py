"""What the ``lookalike`` commands share: the error-handling decorator, opening the collection, the model and
mask option decorators, and progress bars. The command modules (:mod:`indexer.cli`, :mod:`indexer.cli_faces`,
:mod:`indexer.cli_segmentation`) import it; it imports none of them.

Every command is shaped the same way: open the API, make one library call, print. Library errors
(:class:`~indexer.errors.LookalikeError`) become :class:`click.ClickException`: one line on stderr, exit 1.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from retrieval.config import ModelConfig
from retrieval.registry import UnknownNameError

from .engine import Collection
from .errors import LookalikeError
from .masking import MaskSettings
from .settings import mask_settings_with, model_config_with

log = logging.getLogger(__name__)

#: Exit status: finished, but some files were skipped (index) or some queries could not be read (search).
EXIT_SKIPPED = 3

#: Errors raised untranslated by the trainers (``retrieval.training``, ``segmentation.training``), which know
#: nothing of ``LookalikeError``: ``UnknownNameError``, ``ValueError`` or ``RuntimeError`` for a bad setting,
#: ``OSError`` writing a checkpoint. They are printed as they are. ``Collection`` and ``FaceGallery`` raise only
#: ``LookalikeError`` for what a person can fix; a ``RuntimeError`` of the network while embedding (e.g. out of
#: memory) is printed the same way.
UNTRANSLATED = (UnknownNameError, OSError, ValueError, RuntimeError)

F = TypeVar("F", bound=Callable[..., Any])


def library_errors(fn: F | None = None, *, os_error: str | None = None) -> Any:
    """Decorate a command: library errors become :class:`click.ClickException` with the library's message
    (one line on stderr, exit status 1, no traceback; ``-vv`` logs the traceback).

    ``os_error``: the message of an ``OSError`` other than a missing file, formatted with the command's
    parameters and ``exc``, e.g. ``"cannot write the checkpoint {out}: {exc}"``. Click's own exceptions
    (``ctx.exit(4)``, usage errors) pass through.
    """

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def command(*args: Any, **kwargs: Any) -> Any:
            try:
                return f(*args, **kwargs)
            except (click.ClickException, click.exceptions.Exit, click.Abort):
                raise
            except (LookalikeError, *UNTRANSLATED) as exc:
                log.debug("%s failed", f.__name__, exc_info=True)
                message = str(exc)
                if os_error is not None and isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
                    message = os_error.format(**kwargs, exc=exc)
                raise click.ClickException(message) from None

        return command  # type: ignore[return-value]

    return decorate if fn is None else decorate(fn)


def open_collection(ctx: click.Context) -> Collection:
    """The collection of the main group's ``--home`` / ``--db`` / runtime options."""
    try:
        return Collection(ctx.obj["home"], ctx.obj["db_url"], runtime=ctx.obj["runtime"])
    except OSError as exc:  # Store.__init__ does not translate it yet
        raise click.ClickException(f"cannot open the collection: {exc}") from None


class TqdmProgress:
    """:class:`indexer.store.Progress` drawn with tqdm on stderr (hidden when stderr is not a terminal)."""

    def __init__(self, unit: str = "img", leave: bool = True) -> None:
        self._bar: Any = None
        self.unit, self.leave = unit, leave

    def start(self, total: int, description: str) -> None:
        from tqdm import tqdm

        self._bar = tqdm(
            total=total,
            desc=description,
            unit=self.unit,
            file=sys.stderr,
            disable=None,
            dynamic_ncols=True,
            leave=self.leave,
        )

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def step_progress(progress: TqdmProgress, description: str = "training") -> Callable[[int, int], None]:
    """An ``on_step(i, n)`` hook for the trainers: a bar over each epoch's ``n`` steps."""
    started = False

    def on_step(i: int, n: int) -> None:
        nonlocal started
        if not started:
            progress.start(n, description)
            started = True
        progress.advance()
        if i == n:
            progress.finish()
            started = False

    return on_step


def _scales(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, ...] | None:
    if not value:
        return None
    try:
        return tuple(float(s) for s in value.split(","))
    except ValueError:
        raise click.ClickException(
            f"--scales takes numbers separated by commas, e.g. 1,0.707,0.5; got {value!r}"
        ) from None


def model_options(fn: F) -> F:
    """The options that choose the embedding model, shared by the commands that embed (``--scales`` arrives
    parsed, as a tuple of floats)."""
    for opt in reversed(
        [
            click.option("--backbone", help="Backbone network (default efficientnet_lite0). See `lookalike models`."),
            click.option("--weights", help='"imagenet", "random", or a weights file (e.g. a trained checkpoint).'),
            click.option(
                "--pooling",
                type=click.Choice(["gem", "mac", "spoc", "rmac"]),
                help="Pooling of the feature map (default gem).",
            ),
            click.option(
                "--image-size", type=click.IntRange(32), help="Longest image side fed to the network (default 224)."
            ),
            click.option("--scales", callback=_scales, help="Multi-scale extraction, e.g. 1,0.707,0.5 (default 1)."),
        ]
    ):
        fn = opt(fn)
    return fn


def model_from_options(base: ModelConfig | None, **options: Any) -> ModelConfig | None:
    """``base`` with the model options given; ``None`` when no option was given (keep the current model)."""
    if all(v is None for v in options.values()):
        return None
    return model_config_with(base, **options)


def mask_options(fn: F) -> F:
    """The options that choose how images are masked before embedding."""
    fn = click.option(
        "--mask-apply",
        type=click.Choice(["pool", "pixels", "both"]),
        help="Use the mask inside pooling, on the pixels (background set to the mean colour), or both (default).",
    )(fn)
    return click.option(
        "--mask",
        "mask_spec",
        metavar="SEGMENTER",
        help="Mask out the background first: grabcut, unet:CHECKPOINT, deeplab, ... "
        "(see `lookalike models`); none: whole images.",
    )(fn)


def mask_from_options(base: MaskSettings, spec: str | None, apply: str | None) -> MaskSettings | None:
    """``base`` with the mask options given; ``None`` when none was given (keep the current masking)."""
    if spec is None and apply is None:
        return None
    return mask_settings_with(base, spec, apply)
