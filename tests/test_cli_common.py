"""The CLI's shared error handling: a library error is one line on stderr and exit status 1, never a traceback;
click's own exits pass through; the command modules do not import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from indexer.cli_common import library_errors
from indexer.errors import CollectionBusyError, LookalikeError
from retrieval.registry import UnknownNameError


def command(exc: BaseException | None = None, exit_code: int | None = None, **decorator) -> click.Command:
    @click.command()
    @click.option("--out", default="net.pt")
    @click.pass_context
    @library_errors(**decorator)
    def cmd(ctx: click.Context, out: str) -> None:
        click.echo("working")
        if exc is not None:
            raise exc
        if exit_code is not None:
            ctx.exit(exit_code)

    return cmd


@pytest.mark.parametrize(
    "exc",
    [
        LookalikeError("the collection is empty; index a folder first"),
        CollectionBusyError("another lookalike process is writing; wait for it"),
    ],
)
def test_a_library_error_is_one_line_on_stderr_and_exit_1(exc):
    res = CliRunner().invoke(command(exc))
    assert res.exit_code == 1
    assert res.stdout == "working\n"
    assert res.stderr == f"Error: {exc}\n"
    assert "Traceback" not in res.output and not isinstance(res.exception, LookalikeError)


def test_errors_the_library_does_not_translate_yet_are_caught_too():
    res = CliRunner().invoke(command(UnknownNameError("unknown backbone 'alexnet'; known: resnet50")))
    assert res.exit_code == 1 and res.stderr == "Error: unknown backbone 'alexnet'; known: resnet50\n"


def test_an_os_error_can_name_what_was_being_done():
    res = CliRunner().invoke(
        command(PermissionError("denied"), os_error="cannot write the checkpoint {out}: {exc}"), ["--out", "x.pt"]
    )
    assert res.exit_code == 1 and res.stderr == "Error: cannot write the checkpoint x.pt: denied\n"
    missing = CliRunner().invoke(command(FileNotFoundError("folder not found: /data"), os_error="cannot write {out}"))
    assert missing.stderr == "Error: folder not found: /data\n"


@pytest.mark.parametrize("code", [0, 3, 4, 5])
def test_exit_statuses_and_click_errors_pass_through(code):
    assert CliRunner().invoke(command(exit_code=code)).exit_code == code
    usage = CliRunner().invoke(command(click.UsageError("give two images")))
    assert usage.exit_code == 2 and "Usage:" in usage.output


def test_programming_errors_are_not_hidden():
    res = CliRunner().invoke(command(KeyError("oops")))
    assert res.exit_code == 1 and isinstance(res.exception, KeyError)


def test_the_command_modules_do_not_import_each_other_back():
    root = Path(__file__).resolve().parents[1] / "indexer"
    for name in ("cli_common", "cli_faces", "cli_segmentation"):
        tree = ast.parse((root / f"{name}.py").read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert "cli" not in imported and "indexer.cli" not in imported, name
    common = ast.parse((root / "cli_common.py").read_text())
    assert not {n.module for n in ast.walk(common) if isinstance(n, ast.ImportFrom)} & {"cli_faces", "cli_segmentation"}


def _hoisting_group() -> click.Group:
    from indexer.cli_common import GlobalOptionsGroup

    @click.group(cls=GlobalOptionsGroup)
    @click.option("--home")
    @click.option("--device", default="auto")
    @click.option("-v", "--verbose", count=True)
    @click.pass_context
    def top(ctx: click.Context, home: str | None, device: str, verbose: int) -> None:
        ctx.obj = {"home": home, "device": device, "verbose": verbose}

    @top.command()
    @click.argument("folder")
    @click.option("-k", type=int, default=1)
    @click.pass_context
    def index(ctx: click.Context, folder: str, k: int) -> None:
        click.echo(f"{ctx.obj} {folder} {k}")

    @top.command("train-seg")
    @click.option("--device", default=None)
    @click.pass_context
    def train_seg(ctx: click.Context, device: str | None) -> None:
        click.echo(f"{ctx.obj} own={device}")

    @top.group()
    def faces() -> None:
        pass

    @faces.command()
    @click.argument("image")
    @click.pass_context
    def search(ctx: click.Context, image: str) -> None:
        click.echo(f"{ctx.find_root().obj} {image}")

    return top


@pytest.mark.parametrize(
    "args,expected",
    [
        (["index", "DIR", "--home", "X"], "{'home': 'X', 'device': 'auto', 'verbose': 0} DIR 1"),
        (["index", "--home=X", "DIR", "-vv", "-k", "3"], "{'home': 'X', 'device': 'auto', 'verbose': 2} DIR 3"),
        (["--home", "A", "index", "DIR", "--home", "B"], "{'home': 'B', 'device': 'auto', 'verbose': 0} DIR 1"),
        (["faces", "search", "q.jpg", "--device", "cpu"], "{'home': None, 'device': 'cpu', 'verbose': 0} q.jpg"),
        (["index", "--", "--home"], "{'home': None, 'device': 'auto', 'verbose': 0} --home 1"),
    ],
)
def test_group_options_may_come_after_the_command(args, expected):
    res = CliRunner().invoke(_hoisting_group(), args)
    assert res.exit_code == 0, res.output
    assert res.output.strip() == expected


def test_a_command_keeps_its_own_option_of_the_same_name():
    res = CliRunner().invoke(_hoisting_group(), ["train-seg", "--device", "cpu", "--home", "X"])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == "{'home': 'X', 'device': 'auto', 'verbose': 0} own=cpu"


def test_every_command_of_lookalike_takes_the_group_options_after_it():
    from indexer.cli import main

    def commands(group: click.Group, path: list[str]):
        for name, cmd in group.commands.items():
            if isinstance(cmd, click.Group):
                yield from commands(cmd, [*path, name])
            else:
                yield [*path, name], cmd

    hoist = main.hoist_global_options  # type: ignore[attr-defined]
    ctx = click.Context(main)
    found = list(commands(main, []))
    assert len(found) > 10
    for path, cmd in found:
        owns = "--batch-size" in {n for p in cmd.params for n in getattr(p, "opts", [])}  # train-seg's own
        moved = hoist(ctx, [*path, "ARG", "--home", "H", "-v", "--batch-size", "4"])
        if owns:
            assert moved == ["--home", "H", "-v", *path, "ARG", "--batch-size", "4"], path
        else:
            assert moved == ["--home", "H", "-v", "--batch-size", "4", *path, "ARG"], path


def test_a_read_only_command_finds_no_collection_in_an_empty_home(tmp_path):
    from indexer.store import existing_home

    with pytest.raises(LookalikeError, match=r"no collection in .*nowhere; index a folder first: lookalike index DIR"):
        existing_home(tmp_path / "nowhere", None)
    assert not (tmp_path / "nowhere").exists()
    assert existing_home(tmp_path / "nowhere", "postgresql://db/x") == tmp_path / "nowhere"
