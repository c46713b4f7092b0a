"""PostgreSQL as the metadata database: clear one-line errors when it cannot be used, the database's own write
lock (writers with different home folders, other processes), and what SQLite lets pass that PostgreSQL does not.
The collection and gallery tests themselves run on both databases through conftest's ``db_url`` fixture."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import inspect, text

from indexer import db
from indexer.cli import main
from indexer.engine import Collection
from indexer.errors import CollectionBusyError, DatabaseUnavailableError, SettingsError
from indexer.store import write_lock

from .conftest import make_folder
from .pg_server import free_port
from .test_engine import open_collection
from .test_faces_gallery import ALICE, open_gallery, save_photo

needs_driver = pytest.mark.skipif(
    importlib.util.find_spec("psycopg") is None, reason='the PostgreSQL driver psycopg is not installed (".[postgres]")'
)


def cli(*args: str) -> object:
    return CliRunner().invoke(main, [*map(str, args)])


def test_a_postgresql_url_without_its_driver_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` now fails, as without the extra
    url = "postgresql://me:secret@127.0.0.1:5432/photos"
    with pytest.raises(DatabaseUnavailableError, match=r'psycopg is not installed: pip install -e "\.\[postgres\]"'):
        Collection(tmp_path / "home", db_url=url)
    r = cli("--home", tmp_path / "home", "--db", url, "stats")
    assert r.exit_code == 1 and r.output.count("\n") == 1
    assert "me:***@127.0.0.1:5432/photos" in r.output and "secret" not in r.output


@needs_driver
def test_an_unreachable_server_is_one_line_naming_it_with_the_password_hidden(tmp_path):
    url = f"postgresql://me:secret@127.0.0.1:{free_port()}/photos"  # nothing listens there
    with pytest.raises(
        DatabaseUnavailableError, match="cannot reach the database server of postgresql://me:\\*\\*\\*@"
    ):
        Collection(tmp_path / "home", db_url=url)
    r = cli("--home", tmp_path / "home", "--db", url, "index", tmp_path)
    assert r.exit_code == 1 and r.output.count("\n") == 1
    assert r.output.startswith("Error: cannot reach") and "secret" not in r.output


def test_a_wrong_password_and_a_missing_database_are_named(tmp_path, pg_server):
    with pytest.raises(DatabaseUnavailableError, match="refused the login .*: wrong user name or password") as bad:
        Collection(tmp_path / "home", db_url=pg_server.url(password="not-it"))
    assert "not-it" not in str(bad.value) and "postgres:***@" in str(bad.value)
    r = cli("--home", tmp_path / "home", "--db", pg_server.url("no_such_db"), "stats")
    assert r.exit_code == 1 and r.output.count("\n") == 1
    assert "there is no database no_such_db" in r.output and "createdb no_such_db" in r.output


def test_a_restarted_server_costs_a_reconnection_and_a_connection_lost_mid_work_is_one_line(
    tmp_path, pg_server, pg_url
):
    coll = Collection(tmp_path / "home", db_url=pg_url)
    assert coll.stats().images == 0
    pg_server.end_sessions(pg_url)
    assert coll.stats().images == 0  # the pooled connections were dead: checked and replaced, no error
    with coll.session() as s:
        s.execute(text("SELECT 1"))
        pg_server.end_sessions(pg_url)
        with pytest.raises(
            DatabaseUnavailableError, match=r"lost the connection .* postgresql://postgres:\*\*\*@.*again"
        ):
            s.execute(text("SELECT 1"))


def retry_while_busy(work, seconds: float = 10.0):
    """``work()``, tried again while the lock of a process just killed is still held: the server lets it go
    as soon as it sees the connection closed (at once on a loopback socket, but not synchronously)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return work()
        except CollectionBusyError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


HOLD_LOCK = """
import sys
from indexer.engine import Collection
from indexer.store import write_lock
with write_lock(Collection(sys.argv[1], db_url=sys.argv[2])):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_a_writer_with_another_home_is_refused_while_another_process_writes_and_readers_go_on(tmp_path, pg_url):
    photos = tmp_path / "photos"
    make_folder(photos, 6)
    first = open_collection(tmp_path / "first", db_url=pg_url)
    first.index_folder(photos)
    second = open_collection(tmp_path / "second", db_url=pg_url)  # the same database, its own home folder
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path / "third"), pg_url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(CollectionBusyError, match="writing to the collection in postgresql://postgres:\\*\\*\\*@"):
            second.index_folder(photos)
        with pytest.raises(CollectionBusyError):
            second.remove(photos / "img_0001.png")
        r = cli("--home", tmp_path / "first", "--db", pg_url, "index", photos)
        assert r.exit_code == 1 and "another lookalike process is writing to the collection" in r.output
        [res] = second.search([photos / "img_0002.png"], k=2)  # reading needs no lock
        assert res.hits[0].path == str((photos / "img_0002.png").resolve())
        assert second.stats().indexed == 6
    finally:
        holder.kill()  # killed, not stopped: the server ends its session and the lock goes with it
        holder.wait()
    assert retry_while_busy(lambda: second.remove(photos / "img_0001.png")) == 1
    assert first.stats().indexed == 5


def test_two_connections_in_one_process_take_turns(tmp_path, pg_url):
    a = Collection(tmp_path / "a", db_url=pg_url)
    b = Collection(tmp_path / "b", db_url=pg_url)
    with write_lock(a):
        with pytest.raises(CollectionBusyError):
            with write_lock(b):
                pass
        with write_lock(tmp_path / "b"):  # a home folder alone: its files only, no database lock
            pass
    with write_lock(b):
        with pytest.raises(CollectionBusyError):
            with write_lock(a):
                pass


def test_the_lock_belongs_to_the_schema_holding_the_tables(pg_url):
    """Two collections in two schemas of one database do not block each other."""
    with db.make_engine(pg_url).begin() as conn:
        conn.execute(text("CREATE SCHEMA other"))
    elsewhere = pg_url + "?options=-csearch_path%3Dother"
    engine, other = db.make_engine(pg_url), db.make_engine(elsewhere)
    assert "images" in inspect(other).get_table_names(schema="other")
    with db.database_lock(engine, pg_url), db.database_lock(other, elsewhere):
        with pytest.raises(CollectionBusyError):
            with db.database_lock(db.make_engine(pg_url), pg_url):
                pass


def test_a_database_made_by_an_older_version_gets_the_columns_it_lacks(tmp_path, db_url):
    url = db_url or f"sqlite:///{tmp_path / 'old.db'}"
    engine = db.make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE faces DROP COLUMN from_face_id"))
        conn.execute(text("ALTER TABLE images DROP COLUMN mask_fallback"))
    engine.dispose()
    again = db.make_engine(url)
    assert "from_face_id" in {c["name"] for c in inspect(again).get_columns("faces")}
    assert "mask_fallback" in {c["name"] for c in inspect(again).get_columns("images")}


def test_a_name_longer_than_the_database_keeps_is_refused_on_every_database(tmp_path, db_url):
    gallery = open_gallery(tmp_path / "home", db_url=db_url)
    photo = save_photo(tmp_path / "photos" / "a.png", [ALICE], 0)
    with pytest.raises(SettingsError, match=f"at most {db.NAME_LENGTH} characters; this one has 513"):
        gallery.enroll("x" * 513, [photo])
    assert len(gallery.enroll("y" * 512, [photo]).enrolled) == 1
    assert [p.name for p in gallery.identities()] == ["y" * 512]


def test_a_bare_postgresql_url_means_psycopg_3():
    assert db.engine_url("postgresql://u:p@h/d").drivername == "postgresql+psycopg"
    assert db.engine_url("postgres://u:p@h/d").drivername == "postgresql+psycopg"
    assert db.engine_url("postgresql+psycopg2://u:p@h/d").drivername == "postgresql+psycopg2"  # as given
    assert db.engine_url("sqlite:///x.db").drivername == "sqlite"
