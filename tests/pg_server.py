"""A throw-away PostgreSQL server for the tests: ``initdb`` in a temporary folder, ``pg_ctl start`` on a free
loopback port, one fresh database per test, everything stopped and deleted at the end.

The server binaries are found on ``PATH`` or in ``/usr/lib/postgresql/<version>/bin`` (Debian's ``postgresql``
package; ``.ci/run`` installs it when missing). PostgreSQL refuses to run as root, so as root the server runs
as the ``postgres`` user (``runuser``) in a folder it owns. Durability is switched off (``fsync=off``): the data
is thrown away anyway. Logins over TCP need a password (SCRAM), so a wrong one can be tested.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

#: The superuser's password on the test server.
PASSWORD = "lookalike-test"

#: Run beside the test process: when it is gone without stopping its server (killed, timed out), stop that server
#: and delete its folder. Arguments: the test process's pid, pg_ctl, the data folder, the root folder, and the
#: command prefix that runs as the server's user.
_WATCHDOG = """
import os, shutil, subprocess, sys, time
parent, pg_ctl, data, root, as_user = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
while os.path.exists(data):
    try:
        os.kill(parent, 0)
    except ProcessLookupError:
        subprocess.run([*as_user, pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
        break
    time.sleep(1)
"""

_SETTINGS = (
    "-c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off -c synchronous_commit=off "
    "-c full_page_writes=off -c shared_buffers=16MB -c max_connections=100"
)


def server_binaries() -> Path | None:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``: from ``PATH``, else the newest
    ``/usr/lib/postgresql/*/bin``; ``None`` when there is none."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        folder = Path(on_path).resolve().parent
        if (folder / "initdb").exists():
            return folder
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


def why_unavailable() -> str | None:
    """Why no test server can be had here (a line for a skip reason), or ``None`` when one can."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return 'the PostgreSQL driver psycopg is not installed (pip install -e ".[postgres]")'
    if server_binaries() is None:
        return (
            "no PostgreSQL server binaries (initdb, pg_ctl) on PATH or in /usr/lib/postgresql/*/bin "
            "(Debian: apt-get install postgresql; .ci/run installs it)"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run the PostgreSQL server as"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (just now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """A running throw-away server. ``url(name)``: the SQLAlchemy URL of database ``name`` on it."""

    def __init__(self) -> None:
        self.bin = server_binaries()
        if self.bin is None:
            raise RuntimeError(why_unavailable() or "no PostgreSQL server binaries")
        self.root = Path(tempfile.mkdtemp(prefix="lookalike-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        self._names = itertools.count()
        self._as_user: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses root: run it as postgres, in a folder postgres owns
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self._as_user, *args], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed: {done.stderr.strip() or done.stdout.strip()}\n{log}")

    def start(self) -> PgServer:
        pwfile = self.root / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        if self._as_user:
            shutil.chown(pwfile, "postgres")
        self._run(
            str(self.bin / "initdb"),
            *("-D", str(self.data), "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"),
            *("--auth-host=scram-sha-256", "--auth-local=trust", f"--pwfile={pwfile}"),
        )
        for attempt in range(3):  # another process may take the port between free_port() and the start
            self.port = free_port()
            try:
                self._run(
                    str(self.bin / "pg_ctl"),
                    *("-D", str(self.data), "-l", str(self.log), "-w", "-t", "60"),
                    *("-o", f"-p {self.port} {_SETTINGS}", "start"),
                )
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WATCHDOG,
                str(os.getpid()),
                str(self.bin / "pg_ctl"),
                str(self.data),
                str(self.root),
            ]
            + self._as_user,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return self

    def url(self, database: str = "postgres", password: str = PASSWORD) -> str:
        return f"postgresql://postgres:{password}@127.0.0.1:{self.port}/{database}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql)

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        name = f"test_{next(self._names)}"
        self._admin(f"CREATE DATABASE {name} TEMPLATE template0")  # template0: a quicker copy than template1
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a database made by :meth:`create_database`, closing whatever is still connected to it."""
        self._admin(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")

    def end_sessions(self, url: str) -> None:
        """End every connection to the database of ``url``, as a server restart would."""
        name = url.rsplit("/", 1)[1]
        self._admin(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        )

    def stop(self) -> None:
        """Stop the server (fast: nothing is kept) and delete its folder."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
