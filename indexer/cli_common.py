"""What the ``lookalike`` commands share: the error-handling decorator, opening the collection, the model and
mask option decorators, and progress bars. The command modules (:mod:`indexer.cli`, :mod:`indexer.cli_faces`,
:mod:`indexer.cli_segmentation`) import it; it imports none of them.

Every command is shaped the same way: open the API, make one library call, print. Library errors
(:class:`~indexer.errors.LookalikeError`) become :class:`click.ClickException`: one line on stderr, exit 1.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from retrieval.config import ModelConfig
from retrieval.registry import UnknownNameError

from .engine import Collection
from .errors import LookalikeError
from .faces import FaceGallery
from .masking import DEFAULT_SEGMENTER, MaskSettings
from .settings import mask_settings_with, model_config_with

log = logging.getLogger(__name__)

#: Exit status: finished, but some files were skipped (index) or some queries could not be read (search).
EXIT_SKIPPED = 3
#: Exit status: finished, but there was nothing to work on (index: no images in the folder; faces: no face).
EXIT_EMPTY = 5

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
            except BrokenPipeError:  # the reader went away (`lookalike stats | head -2`): not an error of ours
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                raise click.exceptions.Exit(1) from None
            except (LookalikeError, *UNTRANSLATED) as exc:
                log.debug("%s failed", f.__name__, exc_info=True)
                message = str(exc)
                if os_error is not None and isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
                    message = os_error.format(**kwargs, exc=exc)
                raise click.ClickException(message) from None

        return command  # type: ignore[return-value]

    return decorate if fn is None else decorate(fn)


def face_gallery(ctx: click.Context, *, create: bool = True) -> FaceGallery:
    """The gallery, opened (and configured by the group's options) on first use. ``create=False`` (commands
    that only read it): a home without a collection is an error, not a new empty gallery."""
    gallery = ctx.obj.get("face_gallery")
    if gallery is None:
        opener = ctx.obj.get("open_face_gallery")
        if opener is None:
            raise click.ClickException("internal: the faces group did not open the gallery")
        gallery = ctx.obj["face_gallery"] = opener(create)
    return gallery


def emit(as_json: bool, payload: Any, lines: list[str]) -> None:
    """Print ``payload`` as JSON, or ``lines`` as text."""
    if as_json:
        click.echo(json.dumps(payload, indent=2, default=str))
    else:
        for line in lines:
            click.echo(line)


def open_collection(ctx: click.Context, *, create: bool = True) -> Collection:
    """The collection of the main group's ``--home`` / ``--db`` / runtime options. ``create=False`` (read-only
    commands): a home without a collection is an error (:func:`existing_home`), not a new empty collection."""
    return Collection(ctx.obj["home"], ctx.obj["db_url"], runtime=ctx.obj["runtime"], create=create)


class GlobalOptionsGroup(click.Group):
    """A group whose own options (``--home``, ``--device``, ``-v``, ...) may also come after the command, at any
    depth: ``lookalike index DIR --home X`` is read as ``lookalike --home X index DIR``.

    Before parsing, options of the group found after the command name are moved in front of it, unless the
    command that would read them declares an option of the same name (``train-seg --device`` stays
    ``train-seg``'s). Every command added to the group, now or later, gets this for free. Tokens after ``--``
    are left alone.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, self.hoist_global_options(ctx, list(args)))

    def _global_names(self) -> dict[str, bool]:
        """Option name -> whether it takes a value, for the group's own options (not --help / --version)."""
        names: dict[str, bool] = {}
        for p in self.params:
            if isinstance(p, click.Option) and p.expose_value:
                for name in (*p.opts, *p.secondary_opts):
                    names[name] = _takes_value(p)
        return names

    def hoist_global_options(self, ctx: click.Context, args: list[str]) -> list[str]:
        """``args`` with the group's options that follow the command moved in front of the command name."""
        globals_ = self._global_names()
        own = _option_names(self)
        i = 0
        while i < len(args):  # the group's own options, up to the command name
            tok = args[i]
            if tok == "--" or not tok.startswith("-") or tok == "-":
                break
            i += 1 + _value_follows(tok, own)
        if i >= len(args) or args[i] == "--":
            return args
        command_at = i
        command: click.Command | None = self.get_command(ctx, args[i])
        if command is None:
            return args
        moved: list[str] = []
        rest: list[str] = []
        i += 1
        while i < len(args):
            tok = args[i]
            if tok == "--":
                rest.extend(args[i:])
                break
            names = _option_names(command)
            name = _option_name(tok)
            if name is not None and name not in names and (name in globals_ or _is_short_cluster(tok, globals_)):
                n = 1 + (globals_.get(name, False) and "=" not in tok and not _attached_short(tok, name))
                moved.extend(args[i : i + n])
                i += n
                continue
            if name is not None:
                n = 1 + _value_follows(tok, names)
                rest.extend(args[i : i + n])
                i += n
                continue
            if isinstance(command, click.Group):  # a sub-command of a nested group (faces verify ...)
                sub = command.get_command(ctx, tok)
                if sub is not None:
                    command = sub
            rest.append(tok)
            i += 1
        if moved:
            log.debug("options of lookalike given after the command: %s", " ".join(moved))
        return args[:command_at] + moved + [args[command_at]] + rest


def _takes_value(p: click.Parameter) -> bool:
    return isinstance(p, click.Option) and not p.is_flag and not p.count


def _option_names(command: click.Command) -> dict[str, bool]:
    """Option name -> whether it takes a value, for ``command``'s options (and -h / --help)."""
    names = {"-h": False, "--help": False}
    for p in command.params:
        if isinstance(p, click.Option):
            for name in (*p.opts, *p.secondary_opts):
                names[name] = _takes_value(p)
    return names


def _option_name(tok: str) -> str | None:
    """``--home=X`` -> ``--home``; ``-vv`` -> ``-v``; ``-k5`` -> ``-k``; a non-option -> ``None``."""
    if not tok.startswith("-") or tok == "-":
        return None
    if tok.startswith("--"):
        return tok.split("=", 1)[0]
    return tok[:2]


def _attached_short(tok: str, name: str) -> bool:
    """``-k5``: a short option with its value attached."""
    return not tok.startswith("--") and len(tok) > len(name)


def _is_short_cluster(tok: str, globals_: dict[str, bool]) -> bool:
    """``-vv``: a cluster of the group's short flags."""
    return not tok.startswith("--") and len(tok) > 2 and all(f"-{c}" in globals_ for c in tok[1:])


def _value_follows(tok: str, names: dict[str, bool]) -> int:
    """1 when the option ``tok`` takes its value from the next token, else 0."""
    name = _option_name(tok)
    if name is None or not names.get(name, False):
        return 0
    return 0 if "=" in tok or _attached_short(tok, name) else 1


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
        metavar="[SEGMENTER]",
        is_flag=False,
        flag_value=DEFAULT_SEGMENTER,
        help=f"Mask out the background first; alone: the default segmenter ({DEFAULT_SEGMENTER}, packaged, "
        "offline). Or name one: grabcut, unet:CHECKPOINT, foreground:grabcut, ... (see `lookalike models`); "
        "none: whole images. Put it after the folder (`index DIR --mask`).",
    )(fn)


def mask_from_options(base: MaskSettings, spec: str | None, apply: str | None) -> MaskSettings | None:
    """``base`` with the mask options given; ``None`` when none was given (keep the current masking)."""
    if spec is None and apply is None:
        return None
    return mask_settings_with(base, spec, apply)
