"""Folder scanning and the plan of an incremental sync: what is new, changed, moved, removed or unchanged."""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .imageio import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScannedFile:
    path: str  # absolute
    size: int
    mtime_ns: int


@dataclass
class ScanResult:
    files: list[ScannedFile]
    #: Files skipped because their extension is not an image's (counted, not recorded).
    ignored: int = 0
    #: Folders and files left out, and why: (path as it can be shown, reason).
    unreadable: list[tuple[str, str]] = field(default_factory=list)


def _printable(path: str) -> str:
    """A path whose bytes are not UTF-8 (kept by Python as surrogates) as text that can be shown and stored."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _unicode_name(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def scan_folder(root: str | Path, extensions: Iterable[str] = IMAGE_EXTENSIONS) -> ScanResult:
    """List image files under ``root`` recursively (hidden files and folders skipped, symlinked dirs not followed)."""
    root = Path(root).expanduser().resolve()
    if not root.exists():
        raise FileNotFoundError(f"folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    exts = {e.lower() for e in extensions}
    result = ScanResult(files=[])
    stack = [str(root)]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError as exc:
            result.unreadable.append((_printable(d), f"cannot list folder ({exc.strerror or exc})"))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
                if not is_dir and not entry.is_file():
                    continue
                if not is_dir and os.path.splitext(entry.name)[1].lower() not in exts:
                    result.ignored += 1
                    continue
                if not _unicode_name(entry.path):  # the database keeps text: such a name cannot be stored
                    reason = "its name is not valid UTF-8 text; rename it to index it"
                    result.unreadable.append((_printable(entry.path), reason))
                    continue
                if is_dir:
                    stack.append(entry.path)
                    continue
                st = entry.stat()
            except OSError as exc:  # vanished or unreadable while scanning
                log.warning("cannot stat %s: %s", entry.path, exc)
                continue
            result.files.append(ScannedFile(entry.path, st.st_size, st.st_mtime_ns))
    result.files.sort(key=lambda f: f.path)
    return result


@dataclass(frozen=True)
class KnownFile:
    """What the database knows of a file under the scanned folder."""

    id: int
    path: str
    size: int
    mtime_ns: int
    status: str
    content_hash: str | None


@dataclass
class SyncPlan:
    new: list[ScannedFile] = field(default_factory=list)
    #: Known files whose size or mtime changed: (id, file). Their content is checked before re-embedding.
    changed: list[tuple[int, ScannedFile]] = field(default_factory=list)
    #: Known rows whose file moved: (id, new file). Path update only, no embedding.
    moved: list[tuple[int, ScannedFile]] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    #: Known, unchanged, but never finished (a run was interrupted): embed them now.
    resume: list[tuple[int, ScannedFile]] = field(default_factory=list)
    unchanged: int = 0


def plan_sync(
    scanned: list[ScannedFile],
    known: list[KnownFile],
    hash_of: Callable[[str], str | None],
    pending_status: str = "pending",
) -> SyncPlan:
    """Compare a scan with the database. ``hash_of(path)`` hashes a file (``None`` if unreadable); it is only
    called for new files whose size equals that of a missing known file, to recognise moves cheaply."""
    plan = SyncPlan()
    by_path = {k.path: k for k in known}
    seen: set[str] = set()
    new_candidates: list[ScannedFile] = []
    for f in scanned:
        k = by_path.get(f.path)
        if k is None:
            new_candidates.append(f)
            continue
        seen.add(f.path)
        if k.size != f.size or k.mtime_ns != f.mtime_ns:
            plan.changed.append((k.id, f))
        elif k.status == pending_status:
            plan.resume.append((k.id, f))
        else:
            plan.unchanged += 1
    missing = [k for k in known if k.path not in seen]
    missing_by_size: dict[int, list[KnownFile]] = {}
    for k in missing:
        if k.content_hash:
            missing_by_size.setdefault(k.size, []).append(k)
    moved_ids: set[int] = set()
    for f in new_candidates:
        candidates = [k for k in missing_by_size.get(f.size, []) if k.id not in moved_ids]
        if candidates:
            h = hash_of(f.path)
            match = next((k for k in candidates if k.content_hash == h), None)
            if match is not None:
                moved_ids.add(match.id)
                plan.moved.append((match.id, f))
                continue
        plan.new.append(f)
    plan.removed = [k.id for k in missing if k.id not in moved_ids]
    return plan


_GLOB = set("*?[")


@dataclass(frozen=True)
class Exclusions:
    """Paths a collection leaves out of every index run (``lookalike index --exclude``, ``lookalike remove``).

    A pattern with a ``/`` is a path: without wildcards it excludes that file or everything under that
    folder, with wildcards (``*``, ``?``, ``[...]``) it is matched against whole paths (``~/Pictures/*/tmp``).
    A pattern without ``/`` is matched against every file and folder name (``*.gif``, ``thumbnails``).
    """

    patterns: tuple[str, ...] = ()

    @staticmethod
    def normalise(pattern: str) -> str:
        """Absolute paths for path patterns (the collection outlives the working folder); names as given."""
        pattern = pattern.strip()
        if not pattern:
            raise ValueError("an exclusion pattern cannot be empty")
        if os.sep not in pattern and not pattern.startswith("~"):
            return pattern
        if _GLOB & set(pattern):
            return os.path.abspath(os.path.expanduser(pattern))
        return str(Path(pattern).expanduser().resolve())

    def matches(self, path: str) -> bool:
        for pattern in self.patterns:
            if os.sep not in pattern:
                if any(fnmatch.fnmatchcase(part, pattern) for part in Path(path).parts[1:]):
                    return True
            elif _GLOB & set(pattern):
                if fnmatch.fnmatchcase(path, pattern):
                    return True
            elif path == pattern or path.startswith(pattern.rstrip(os.sep) + os.sep):
                return True
        return False
