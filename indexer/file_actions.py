"""Acting on duplicates, safely: move copies to a folder, replace byte-identical copies by hard links to the
keeper, or send copies to the desktop trash; every action journaled, and undone by replaying the journal
backwards.

Rules:

- a dry run (the default) changes nothing; it says what would be done;
- the keeper, reference files and files the collection does not index are never touched;
- before acting, the keeper and the copy are re-checked against what was indexed (size and mtime, and the
  content hash when those differ; always the hash before a hard link): a file changed or gone since indexing is
  skipped, and a group whose keeper changed or is gone is skipped whole;
- ``--hardlink`` only replaces copies byte-identical to the keeper (same content hash, same file system):
  a near copy's pixels would be lost;
- nothing is overwritten: a move whose target exists is skipped; a move to another file system copies to a
  temporary name, syncs, renames, and only then removes the source (a full disk leaves the source intact).

Kill safety: each action is written to the run's journal (``<home>/duplicates-journal/<run>.jsonl``) and
fsynced *before* it is done, and marked done after. :func:`undo` reads the newest journal not yet undone and
reverts its entries last first, looking at the files as they are, so it also reverts a half-done last entry
(or one that never happened), and can itself be interrupted and run again.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import LookalikeError, SettingsError
from .imageio import file_hash
from .store import write_lock

if TYPE_CHECKING:
    from .duplicates import DuplicateFile, DuplicateGroup
    from .engine import Collection

__all__ = ["ACTIONS", "ActionResult", "ActionReport", "Journal", "apply_actions", "undo", "JOURNAL_DIR"]

log = logging.getLogger(__name__)

ACTIONS = ("move", "hardlink", "trash")
JOURNAL_DIR = "duplicates-journal"
PARTIAL = ".lookalike-partial"
LINK_TMP = ".lookalike-link"
RESTORE_TMP = ".lookalike-restore"


@dataclass
class ActionResult:
    path: str
    #: "done", "would" (dry run), "skipped", "failed"; for undo: "restored", "nothing to undo", "failed"
    status: str
    reason: str = ""
    dest: str | None = None
    keeper: str | None = None


@dataclass
class ActionReport:
    action: str
    dry_run: bool
    results: list[ActionResult] = field(default_factory=list)
    journal: str | None = None

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "dry_run": self.dry_run,
            "journal": self.journal,
            "results": [r.__dict__ for r in self.results],
        }


# --------------------------------------------------------------------------------------------- journal


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Journal:
    """One run's journal: JSON lines, each fsynced before the caller goes on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: Any = None

    @classmethod
    def new(cls, home: Path) -> Journal:
        folder = home / JOURNAL_DIR
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{time.time_ns()}-{os.getpid()}.jsonl"
        j = cls(path)
        j._fh = open(path, "a", encoding="utf-8")
        _fsync_dir(folder)
        return j

    def write(self, entry: dict[str, Any]) -> None:
        self._fh.write(json.dumps(entry, sort_keys=True) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    @staticmethod
    def read(path: Path) -> list[dict[str, Any]]:
        """Entries merged by ``seq`` (a ``begin`` line updated by its ``done`` / ``failed`` line), in order. A
        torn last line (a kill while writing it) is ignored."""
        merged: dict[int, dict[str, Any]] = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                log.warning("ignoring a torn line in %s", path)
                continue
            merged.setdefault(int(e["seq"]), {}).update(e)
        return [merged[k] for k in sorted(merged)]


def latest_journal(home: Path) -> Path | None:
    folder = home / JOURNAL_DIR
    if not folder.is_dir():
        return None
    runs = sorted(folder.glob("*.jsonl"), key=lambda p: int(p.name.split("-")[0]))
    return runs[-1] if runs else None


# --------------------------------------------------------------------------------------------- checks


def _unchanged(f: DuplicateFile, full_hash: bool) -> str | None:
    """Why ``f`` may not be acted on (changed or gone since indexing), or ``None``."""
    try:
        st = os.lstat(f.path)
    except FileNotFoundError:
        return "gone since indexing"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if not os.path.isfile(f.path) or os.path.islink(f.path):
        return "not a regular file"
    if f.size is not None and st.st_size != f.size:
        return "changed since indexing (size); re-index first"
    if full_hash or (f.mtime_ns is not None and st.st_mtime_ns != f.mtime_ns):
        try:
            h = file_hash(f.path)
        except OSError as exc:
            return f"cannot be read ({exc.strerror or exc})"
        if f.content_hash is not None and h != f.content_hash:
            return "changed since indexing (content); re-index first"
    return None


def _mirror(dest_root: Path, path: str) -> Path:
    """Where ``path`` goes under ``dest_root``: its absolute path below it (no two files collide)."""
    return dest_root / Path(path).resolve().relative_to(Path(path).resolve().anchor)


# --------------------------------------------------------------------------------------------- actions


def apply_actions(
    collection: Collection,
    groups: list[DuplicateGroup],
    action: str,
    move_to: str | Path | None = None,
    dry_run: bool = True,
    only_under: str | Path | None = None,
) -> ActionReport:
    """Apply ``action`` (``"move"`` to ``move_to``, ``"hardlink"``, ``"trash"``) to every file of ``groups`` that
    is neither kept nor a reference file (and is under ``only_under`` when given). ``dry_run``: change nothing,
    say what would be done."""
    if action not in ACTIONS:
        raise SettingsError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
    dest_root: Path | None = None
    if action == "move":
        if move_to is None:
            raise SettingsError("moving needs a target folder (--move-to DIR)")
        dest_root = Path(move_to).expanduser().resolve()
        if dest_root.exists() and not dest_root.is_dir():
            raise LookalikeError(f"{move_to} is not a folder")
    if action == "trash":
        try:
            import send2trash  # noqa: F401
        except ImportError:
            raise LookalikeError("the trash needs the Send2Trash package: pip install Send2Trash") from None
    limit = str(Path(only_under).expanduser().resolve()) if only_under is not None else None
    report = ActionReport(action=action, dry_run=dry_run)
    plan: list[tuple[DuplicateFile, DuplicateFile, Path | None]] = []
    for g in groups:
        keeper = g.keeper
        problem = _unchanged(keeper, full_hash=action == "hardlink")
        for f in g.files[1:]:
            if f.keep or f.reference:
                continue
            if limit is not None and not (f.path == limit or f.path.startswith(limit.rstrip(os.sep) + os.sep)):
                continue
            if problem is not None:
                report.results.append(ActionResult(f.path, "skipped", f"keeper {keeper.path} {problem}"))
                continue
            if action == "hardlink" and (f.content_hash is None or f.content_hash != keeper.content_hash):
                report.results.append(
                    ActionResult(f.path, "skipped", "not byte-identical to the keeper: a hard link would lose it")
                )
                continue
            dest = _mirror(dest_root, f.path) if dest_root is not None else None
            if dest is not None and (dest.exists() or dest.is_symlink()):
                report.results.append(ActionResult(f.path, "skipped", f"{dest} exists", str(dest)))
                continue
            plan.append((f, keeper, dest))
    if dry_run:
        for f, keeper, dest in plan:
            why = _unchanged(f, full_hash=False)
            report.results.append(
                ActionResult(
                    f.path, "would" if why is None else "skipped", why or "", str(dest) if dest else None, keeper.path
                )
            )
        return report
    if not plan:
        return report
    with write_lock(collection.home):
        journal = Journal.new(collection.home)
        report.journal = str(journal.path)
        try:
            for seq, (f, keeper, dest) in enumerate(plan):
                why = _unchanged(f, full_hash=action == "hardlink")
                if why is not None:
                    report.results.append(ActionResult(f.path, "skipped", why, keeper=keeper.path))
                    continue
                st = os.stat(f.path)
                entry = {
                    "seq": seq,
                    "state": "begin",
                    "op": action,
                    "path": f.path,
                    "keeper": keeper.path,
                    "dest": str(dest) if dest else None,
                    "size": st.st_size,
                    "mtime_ns": st.st_mtime_ns,
                    "mode": st.st_mode & 0o7777,
                    "hash": f.content_hash,
                    "time": time.time(),
                }
                journal.write(entry)
                try:
                    extra = _do(action, f.path, keeper.path, dest)
                except OSError as exc:
                    journal.write({"seq": seq, "state": "failed", "error": str(exc)})
                    reason = "no space left on the target" if exc.errno == errno.ENOSPC else str(exc.strerror or exc)
                    report.results.append(
                        ActionResult(f.path, "failed", reason, str(dest) if dest else None, keeper.path)
                    )
                    continue
                journal.write({"seq": seq, "state": "done", **extra})
                report.results.append(ActionResult(f.path, "done", "", str(dest) if dest else None, keeper.path))
        finally:
            journal.close()
    return report


def _do(action: str, path: str, keeper: str, dest: Path | None) -> dict[str, Any]:
    if action == "move":
        assert dest is not None
        _move(Path(path), dest)
        return {}
    if action == "hardlink":
        if os.stat(path).st_dev != os.stat(keeper).st_dev:
            raise OSError(errno.EXDEV, "the keeper is on another file system")
        tmp = Path(path).with_name("." + Path(path).name + LINK_TMP)
        if tmp.exists():
            tmp.unlink()
        os.link(keeper, tmp)
        os.replace(tmp, path)
        _fsync_dir(Path(path).parent)
        return {}
    if action == "trash":
        from send2trash import send2trash

        before = time.time()
        send2trash(path)
        found = _find_in_trash(path, since=before - 5)
        return {"trashed": str(found[0]) if found else None, "trashinfo": str(found[1]) if found else None}
    raise AssertionError(action)


def _move(src: Path, dest: Path) -> None:
    """Move without ever overwriting and without a moment where neither copy exists."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)  # same file system: fails if dest exists
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
            raise
        tmp = dest.with_name(dest.name + PARTIAL)
        try:
            shutil.copy2(src, tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            if dest.exists():
                raise FileExistsError(errno.EEXIST, "the target exists", str(dest))
            os.rename(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    _fsync_dir(dest.parent)
    os.unlink(src)
    _fsync_dir(src.parent)


# --------------------------------------------------------------------------------------------- trash


def _trash_dirs(path: str) -> list[tuple[Path, Path | None]]:
    """Freedesktop trash folders that may hold ``path`` -> ``(trash, topdir)`` (``topdir`` for the relative
    paths of a volume's trash; ``None`` for the home trash)."""
    xdg = os.environ.get("XDG_DATA_HOME")
    home_trash = (Path(xdg) if xdg else Path.home() / ".local" / "share") / "Trash"
    out: list[tuple[Path, Path | None]] = [(home_trash, None)]
    p = Path(path).parent
    try:
        dev = os.stat(p).st_dev
        while p.parent != p and os.stat(p.parent).st_dev == dev:
            p = p.parent
    except OSError:
        return out
    uid = os.getuid()
    out += [(p / f".Trash-{uid}", p), (p / ".Trash" / str(uid), p)]
    return out


def _find_in_trash(path: str, since: float = 0.0) -> tuple[Path, Path] | None:
    """The newest trashed file whose original path is ``path`` -> ``(file in the trash, its .trashinfo)``."""
    best: tuple[float, Path, Path] | None = None
    for trash, topdir in _trash_dirs(path):
        info_dir = trash / "info"
        if not info_dir.is_dir():
            continue
        for info in info_dir.glob("*.trashinfo"):
            try:
                text = info.read_text(encoding="utf-8", errors="replace")
                mtime = info.stat().st_mtime
            except OSError:
                continue
            if mtime < since:
                continue
            for line in text.splitlines():
                if line.startswith("Path="):
                    orig = urllib.parse.unquote(line[5:])
                    if topdir is not None and not orig.startswith("/"):
                        orig = str(topdir / orig)
                    if orig == path:
                        f = trash / "files" / info.name[: -len(".trashinfo")]
                        if (f.exists() or f.is_symlink()) and (best is None or mtime > best[0]):
                            best = (mtime, f, info)
    return (best[1], best[2]) if best else None


# --------------------------------------------------------------------------------------------- undo


def undo(collection: Collection, journal: str | Path | None = None) -> ActionReport:
    """Revert the newest run not yet undone (or ``journal``), last action first. Safe to run again after an
    interruption; the journal is marked undone only when every entry was reverted."""
    with write_lock(collection.home):
        path = Path(journal) if journal is not None else latest_journal(collection.home)
        if path is None or not path.exists():
            raise LookalikeError(f"nothing to undo: no journal of duplicates actions in {collection.home}")
        entries = Journal.read(path)
        report = ActionReport(action="undo", dry_run=False, journal=str(path))
        for e in reversed(entries):
            try:
                status, reason = _undo_one(e)
            except OSError as exc:
                status, reason = "failed", str(exc.strerror or exc)
            report.results.append(ActionResult(e["path"], status, reason, e.get("dest"), e.get("keeper")))
        if not report.count("failed"):
            os.replace(path, path.with_name(path.name + ".undone"))
        return report


def _undo_one(e: dict[str, Any]) -> tuple[str, str]:
    src = Path(e["path"])
    op = e["op"]
    if op == "move":
        dest = Path(e["dest"])
        Path(str(dest) + PARTIAL).unlink(missing_ok=True)
        if src.exists():
            if dest.exists() and (os.path.samefile(src, dest) or file_hash(dest) == file_hash(src)):
                dest.unlink()  # interrupted after the copy, before removing the source
                return "restored", "the move had not finished"
            return "nothing to undo", ""
        if not dest.exists():
            return "failed", f"neither {src} nor {dest} exists"
        _move(dest, src)
        return "restored", ""
    if op == "hardlink":
        keeper = Path(e["keeper"])
        tmp = src.with_name("." + src.name + LINK_TMP)
        tmp.unlink(missing_ok=True)
        if not src.exists():
            return "failed", f"{src} is gone"
        if not keeper.exists() or not os.path.samefile(src, keeper):
            return "nothing to undo", ""
        restore = src.with_name("." + src.name + RESTORE_TMP)
        shutil.copyfile(keeper, restore)
        os.chmod(restore, int(e.get("mode", 0o644)))
        os.utime(restore, ns=(int(e["mtime_ns"]), int(e["mtime_ns"])))
        with open(restore, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(restore, src)
        _fsync_dir(src.parent)
        return "restored", ""
    if op == "trash":
        if src.exists():
            return "nothing to undo", ""
        found: tuple[Path, Path] | None = None
        if e.get("trashed") and Path(e["trashed"]).exists():
            found = (Path(e["trashed"]), Path(e["trashinfo"]))
        else:
            found = _find_in_trash(str(src))
        if found is None:
            return "failed", f"{src} is not in the trash any more"
        src.parent.mkdir(parents=True, exist_ok=True)
        _move(found[0], src)
        found[1].unlink(missing_ok=True)
        return "restored", ""
    raise LookalikeError(f"unknown action {op!r} in the journal")
