"""``lookalike serve``: the HTTP API and the web app (:mod:`indexer.server`) on uvicorn, over the current collection.

FastAPI and uvicorn are imported by this command only. The socket is bound here (:func:`indexer.server.bind_socket`), before uvicorn starts, so that a port in use is one
clear line and the printed address is the one actually bound (``--port 0`` picks a free port).
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import click

from .cli_common import library_errors, open_collection

log = logging.getLogger(__name__)


def _url(host: str, port: int, token: str | None) -> str:
    shown = host.strip("[]")
    if shown in ("0.0.0.0", "::"):  # every address of this machine: show its name
        shown = socket.gethostname()
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


@click.command()
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (other than loopback needs a token)."
)
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="Port (0: any free port).")
@click.option(
    "--token",
    envvar="LOOKALIKE_TOKEN",
    help="Every API request must send 'Authorization: Bearer TOKEN'. Env: LOOKALIKE_TOKEN. "
    "Generated and printed when --host is not a loopback address.",
)
@click.option(
    "--allow-changes",
    is_flag=True,
    help="Let the API change the collection (name people) and act on duplicates (trash, hard links, moves to "
    "--move-to; journaled, undoable). Default: read-only.",
)
@click.option(
    "--move-to",
    type=click.Path(file_okay=False, path_type=Path),
    help="With --allow-changes: the folder duplicates actions move copies to.",
)
@click.option(
    "--max-upload-mb",
    default=25.0,
    show_default=True,
    type=click.FloatRange(0, min_open=True),
    help="Largest upload of a search request, in MB.",
)
@click.option(
    "--threads",
    default=1,
    show_default=True,
    type=click.IntRange(1),
    help="CPU threads of the network for one search (a query is one image: more threads help little, and on a "
    "busy machine they wait for each other).",
)
@click.pass_context
@library_errors
def serve(
    ctx: click.Context,
    host: str,
    port: int,
    token: str | None,
    allow_changes: bool,
    move_to: Path | None,
    max_upload_mb: float,
    threads: int,
) -> None:
    """Serve the collection: a web app to search it by picture, and its HTTP API (docs at /docs).

    Example: lookalike serve   (then open http://127.0.0.1:8765/)
    """
    import torch
    import uvicorn  # the server's modules load only for this command (every other command starts faster)

    from .server import ServeSettings, bind_socket, create_app, is_loopback, new_token

    coll = open_collection(ctx, create=False)
    # one thread by default: with two, an upload's network pass stalled whenever another process held a core
    # (python -m benchmarks.bench_serve compares --threads 1 and 2: upload_and_embed)
    torch.set_num_threads(threads)
    if token is None and not is_loopback(host):
        token = new_token()
        click.echo(f"--host {host} is reachable from other machines: generated a token for this run", err=True)
    settings = ServeSettings(
        host=host,
        port=port,
        token=token,
        allow_changes=allow_changes,
        move_to=move_to.expanduser().resolve() if move_to is not None else None,
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
    )
    app = create_app(coll, settings)
    sock = bind_socket(host, port)
    bound = sock.getsockname()[1]
    click.echo(f"lookalike: serving {coll.home} at {_url(host, bound, token)}", nl=True)
    click.echo(f"API docs: {_url(host, bound, None)}docs" + ("" if allow_changes else "  (read-only)"))
    verbose = logging.getLogger().getEffectiveLevel() <= logging.INFO  # lookalike -v
    config = uvicorn.Config(
        app,
        log_level="info" if verbose else "warning",
        access_log=verbose,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
