"""The spool directory: where tiles arrive, when they are ready, and how results and moves stay exactly-once.

Layout (created if missing)::

    SPOOL/incoming/   tiles: <name>.npz files or <name>/ folders; names starting with "." are ignored
    SPOOL/done/       inputs whose results are written
    SPOOL/failed/     inputs that failed, each with <name>.reason (one line)
    SPOOL/results/    <tile>.jsonl (+ <tile>.geojson when georeferenced)

Readiness: a tile is taken once ``incoming/<name>.ready`` exists beside it, or after ``settle_s`` seconds
without any change to its files (size, mtime, count). Writers should either drop the marker after writing or
write under a dot-name and ``rename`` into ``incoming/``.

Exactly-once: results are written to a temp file, fsynced and renamed (``.jsonl`` last: it is the commit
record, and each record carries the input's SHA-256) BEFORE the input is renamed into ``done/``. After a
crash, an input still in ``incoming/`` whose ``results/<tile>.jsonl`` carries its hash is only moved; a
different input under an existing tile id is a duplicate and fails. Tile ids match
``[A-Za-z0-9][A-Za-z0-9._-]*`` without ``..``; every path written is built from a checked name and verified to
lie in its spool folder.
"""

from __future__ import annotations

import errno
import json
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mosaic_edge.errors import UserError

DIRS = ("incoming", "done", "failed", "results")
READY = ".ready"
TMP_PREFIX = ".tmp-"
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def tile_id_of(name: str) -> str:
    return name[:-4] if name.endswith(".npz") else name


def valid_tile_id(tile_id: str) -> bool:
    """True for ids that are safe as file names in every spool folder."""
    return bool(_ID.fullmatch(tile_id)) and ".." not in tile_id and not tile_id.endswith(READY)


def sanitise(name: str) -> str:
    """A safe file name derived from an untrusted one (for ``failed/``)."""
    out = re.sub(r"[^A-Za-z0-9._-]", "_", name).replace("..", "__").lstrip(".-_")[:200]
    return out or "unnamed"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, sync_dir: bool = True) -> None:
    """Write ``data`` to ``path`` via temp file + fsync + rename; nothing partial is ever visible.

    ``sync_dir=False`` leaves the directory fsync (which makes the rename durable) to the caller, so a batch
    of files costs one directory sync.
    """
    tmp = path.parent / f"{TMP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def _write_no_dir_sync(path: Path, data: bytes) -> None:
    atomic_write(path, data, sync_dir=False)


@dataclass
class Candidate:
    """An entry of ``incoming/`` that is ready to be taken."""

    name: str
    path: Path
    tile_id: str
    marker: bool
    age_s: float  # seconds since its files last changed


class Spool:
    """The four spool folders plus readiness tracking.

    Args:
        root: Spool directory.
        settle_s: Seconds without change after which an unmarked tile is ready.
        writer: Function writing bytes atomically; directory syncs are done by :meth:`sync` (replaced in
            tests to simulate a full disk).
    """

    def __init__(self, root: str | Path, settle_s: float = 2.0, writer=_write_no_dir_sync):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"spool {self.root} is not a directory")
        for d in DIRS:
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self.incoming, self.done, self.failed, self.results = (self.root / d for d in DIRS)
        self.settle_s = settle_s
        self.writer = writer
        self._seen: dict[str, tuple[tuple, float]] = {}

    # ---- readiness -----------------------------------------------------------------------------------------
    def _signature(self, path: Path) -> tuple:
        st = os.lstat(path)
        sig = [(path.name, st.st_size, st.st_mtime_ns)]
        if path.is_dir() and not path.is_symlink():
            for root, dirs, files in os.walk(path):
                for name in sorted(dirs + files):
                    s = os.lstat(os.path.join(root, name))
                    sig.append((name, s.st_size, s.st_mtime_ns))
                if len(sig) > 1000:  # bounded work on hostile folders; the tile fails later anyway
                    break
        return tuple(sig)

    def poll(self, skip: set[str] | frozenset[str] = frozenset()) -> tuple[list[Candidate], int]:
        """Return (ready candidates in arrival order, number of entries not yet settled)."""
        now = time.monotonic()
        try:
            names = os.listdir(self.incoming)
        except FileNotFoundError:
            return [], 0
        present = set(names)
        ready, pending = [], 0
        for name in names:
            if name.startswith(".") or name in skip:
                continue
            if name.endswith(READY):
                if name[: -len(READY)] not in present:
                    self._drop_stale_marker(name)
                continue
            path = self.incoming / name
            try:
                sig = self._signature(path)
            except (FileNotFoundError, NotADirectoryError):
                continue  # vanished between listdir and stat
            old = self._seen.get(name)
            if old is None or old[0] != sig:
                self._seen[name] = (sig, now)
            age = now - self._seen[name][1]
            marker = name + READY in present
            if marker or age >= self.settle_s:
                ready.append(Candidate(name, path, tile_id_of(name), marker, age))
            else:
                pending += 1
        for gone in set(self._seen) - present:
            del self._seen[gone]
        ready.sort(key=lambda c: -c.age_s)
        return ready, pending

    def _drop_stale_marker(self, name: str) -> None:
        # A marker whose tile is gone was left by a crash between the move and the marker's removal.
        try:
            if time.time() - os.lstat(self.incoming / name).st_mtime > max(self.settle_s, 1.0):
                (self.incoming / name).unlink()
        except FileNotFoundError:
            pass

    # ---- outputs -------------------------------------------------------------------------------------------
    def _inside(self, folder: Path, name: str) -> Path:
        path = folder / name
        if path.parent != folder or name in ("", ".", "..") or "/" in name or "\0" in name:
            raise UserError(f"refusing to write {name!r} outside {folder}")
        return path

    def result_path(self, tile_id: str, suffix: str = ".jsonl") -> Path:
        if not valid_tile_id(tile_id):
            raise UserError(f"invalid tile id {tile_id!r}")
        return self._inside(self.results, tile_id + suffix)

    def result_input_hash(self, tile_id: str) -> str | None:
        """The input SHA-256 recorded in an existing results file, or None when there is none."""
        path = self.result_path(tile_id)
        try:
            with open(path, encoding="utf-8") as f:
                first = f.readline()
            return str(json.loads(first).get("input_sha256"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return ""  # unreadable: treated as a different input

    def sync(self, *folders: str) -> None:
        """fsync the named spool folders, making renames into them durable."""
        for name in folders:
            fsync_dir(self.root / name)

    def write_results(self, tile_id: str, jsonl: bytes, geojson: bytes | None) -> None:
        """Write a tile's results; the ``.jsonl`` goes last because it is the commit record.

        Durable only after ``sync("results")``, which must precede moving the input to ``done/``.
        """
        if geojson is not None:
            self.writer(self.result_path(tile_id, ".geojson"), geojson)
        self.writer(self.result_path(tile_id), jsonl)

    def _remove_marker(self, name: str) -> None:
        (self.incoming / (name + READY)).unlink(missing_ok=True)

    def move_done(self, cand: Candidate, sync: bool = True) -> None:
        """Move an input whose results are durable into ``done/`` (``sync=False``: caller syncs later)."""
        dest = self._inside(self.done, cand.name)
        if dest.exists() or dest.is_symlink():
            raise FileExistsError(f"done/{cand.name} already exists")
        os.rename(cand.path, dest)
        self._remove_marker(cand.name)
        if sync:
            self.sync("done", "incoming")

    def move_failed(self, name: str, reason: str) -> str:
        """Write ``failed/<name>.reason`` then move the input (if still there) into ``failed/``."""
        base = sanitise(name)
        dest_name, k = base, 0
        while (self.failed / dest_name).exists() or (self.failed / (dest_name + ".reason")).exists():
            k += 1
            dest_name = f"{base}.{k}"
        line = " ".join(str(reason).split())[:500] + "\n"
        self.writer(self._inside(self.failed, dest_name + ".reason"), line.encode("utf-8", "replace"))
        src = self.incoming / name
        if src.parent == self.incoming and (src.exists() or src.is_symlink()):
            os.rename(src, self._inside(self.failed, dest_name))  # renames a symlink itself, never its target
        self._remove_marker(name)
        fsync_dir(self.failed)
        return dest_name

    def recover(self) -> int:
        """Remove temp files left by a crash; return how many."""
        n = 0
        for folder in (self.results, self.failed):
            for p in folder.glob(TMP_PREFIX + "*"):
                p.unlink(missing_ok=True)
                n += 1
        return n


class IncomingWatcher:
    """Sleep until ``incoming/`` changes (inotify) or a poll interval passes."""

    def __init__(self, folder: Path, use_inotify: bool):
        self.ino: Any = None
        if use_inotify:
            try:
                import inotify_simple as ins

                self.ino = ins.INotify()
                f = ins.flags
                self.ino.add_watch(str(folder), f.CREATE | f.MOVED_TO | f.CLOSE_WRITE | f.DELETE | f.ATTRIB)
            except (ImportError, OSError):
                self.ino = None  # polling fallback (no inotify_simple, or out of watches)

    def wait(self, seconds: float, stop: threading.Event) -> None:
        if self.ino is not None:
            self.ino.read(timeout=int(max(seconds, 0.01) * 1000))
        else:
            stop.wait(seconds)

    def close(self) -> None:
        if self.ino is not None:
            self.ino.close()
