"""The spool directory: where tiles arrive, when they are ready, and how results and moves stay exactly-once.

Layout (created if missing)::

    SPOOL/incoming/   tiles: <id>.npz files or <id>/ folders; names starting with "." are ignored
    SPOOL/done/       inputs whose results are written
    SPOOL/failed/     entries that are not tiles or failed, each with <name>.reason (one line)
    SPOOL/results/    <tile>.jsonl (+ <tile>.geojson when georeferenced)

Readiness: an entry is taken once ``incoming/<name>.ready`` (a regular file) exists beside it, or after
``settle_s`` seconds without any change to it (inode, size, mtime; for a folder, of every file in it). Writers
should either drop the marker after writing or write under a dot-name and ``rename`` into ``incoming/``.

Every entry gets an answer, one entry at a time (:mod:`~.spool_scan`: one entry never stops the scan): a tile
(a regular ``<id>.npz`` file or a folder, :func:`~.spool_names.valid_tile_id`) is handed to the daemon;
anything else (symlinks, FIFOs, sockets, devices, other names, markers that are not regular files) becomes a
candidate with a ``problem`` and goes to ``failed/`` with that reason (:meth:`Spool.quarantine`). An entry that
cannot even be moved (no permission, a read-only or full disk) stays, is remembered and reported once, and is
retried only when it changes or after ``unmovable_retry_s``. A marker whose tile is gone is removed.

Exactly-once: results are written to a temp file, fsynced and renamed (``.jsonl`` last: it is the commit
record, and each record carries the input's SHA-256) BEFORE the input is renamed into ``done/``. After a
crash, an input still in ``incoming/`` whose ``results/<tile>.jsonl`` carries its hash is only moved; a
different input under an existing tile id is a duplicate and fails. Every path written is built from a checked
name and verified to lie in its spool folder. When a spool folder is removed or replaced while running,
:meth:`Spool.poll` raises :class:`SpoolGone` (the daemon exits and its service manager restarts it).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mosaic_edge.edge_runtime.spool_names import (
    READY,
    TMP_PREFIX,
    escape,
    numbered,
    one_line,
    quarantine_base,
    sanitise,
    temp_name,
    tile_id_of,
    valid_tile_id,
)
from mosaic_edge.edge_runtime.spool_scan import Candidate, IncomingScan, SpoolGone, signature
from mosaic_edge.errors import UserError

__all__ = ["DIRS", "DISK_FULL", "READY", "TMP_PREFIX", "Candidate", "IncomingWatcher", "Quarantine", "Spool",
           "SpoolGone", "atomic_write", "fsync_dir", "sanitise", "tile_id_of", "valid_tile_id"]

DIRS = ("incoming", "done", "failed", "results")
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


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
    tmp = path.parent / temp_name(path.name)
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


@dataclass(frozen=True)
class Quarantine:
    """What :meth:`Spool.quarantine` did with an entry."""

    dest: str | None  # its name in failed/ (a reason was written), None when it stayed in incoming/
    vanished: bool = False  # it was gone before it could be moved (only the reason is in failed/)
    unmovable: str | None = None  # why it could not be moved: it stays, skipped until it changes
    first_report: bool = False  # unmovable and not reported before


class Spool(IncomingScan):
    """The four spool folders, readiness tracking (:class:`~.spool_scan.IncomingScan`) and the moves.

    Args:
        root: Spool directory.
        settle_s: Seconds without change after which an unmarked entry is ready.
        writer: Function writing bytes atomically; directory syncs are done by :meth:`sync` (replaced in
            tests to simulate a full disk).
        marker_grace_s: Age after which a ``.ready`` marker whose tile is absent is removed (default: the
            larger of ``settle_s`` and 1 s, so a marker written just before its tile survives).
        unmovable_retry_s: An entry that could not be moved is retried after this long (or when it changes).
    """

    def __init__(self, root: str | Path, settle_s: float = 2.0, writer=_write_no_dir_sync,
                 marker_grace_s: float | None = None, unmovable_retry_s: float = 600.0):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"spool {self.root} is not a directory")
        try:
            for d in DIRS:
                (self.root / d).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create spool folders under {self.root}: {exc.strerror or exc}") from exc
        self.incoming, self.done, self.failed, self.results = (self.root / d for d in DIRS)
        super().__init__(self.incoming, settle_s, marker_grace_s, unmovable_retry_s)
        self.writer = writer
        self._identity = self._identities()

    # ---- the folders themselves ----------------------------------------------------------------------------
    def _identities(self) -> dict[Path, tuple[int, int]]:
        out = {}
        for path in (self.root, *(self.root / d for d in DIRS)):
            st = os.stat(path)
            out[path] = (st.st_dev, st.st_ino)
        return out

    def check(self) -> None:
        """Raise :class:`SpoolGone` when a spool folder was removed or replaced since start."""
        for path, ident in self._identity.items():
            try:
                st = os.stat(path)
            except OSError as exc:
                raise SpoolGone(f"spool folder {path} is gone while running ({exc.strerror})") from exc
            if not stat.S_ISDIR(st.st_mode) or (st.st_dev, st.st_ino) != ident:
                raise SpoolGone(f"spool folder {path} was replaced while running")

    # ---- readiness -----------------------------------------------------------------------------------------
    def poll(self, skip: set[str] | frozenset[str] = frozenset()) -> tuple[list[Candidate], int]:
        """Return (ready candidates in arrival order, number of entries not yet settled).

        Raises:
            SpoolGone: ``incoming/`` (or another spool folder) was removed, replaced or cannot be listed.
        """
        self.check()
        now = time.monotonic()
        try:
            with os.scandir(self.incoming) as it:
                present = {e.name for e in it}
        except OSError as exc:
            raise SpoolGone(f"cannot list {self.incoming}: {exc.strerror or exc}") from exc
        ready, pending = self._scan_entries(present, skip, now)
        ready.sort(key=lambda c: -c.age_s)
        return ready, pending

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
        # Only a regular file is a marker; a folder/FIFO/symlink so named is quarantined by the next scan, and a
        # marker that cannot be removed (no permission) is dealt with there too.
        marker = self.incoming / (name + READY)
        with contextlib.suppress(OSError):
            if stat.S_ISREG(os.lstat(marker).st_mode):
                marker.unlink()

    def move_done(self, cand: Candidate, sync: bool = True) -> None:
        """Move an input whose results are durable into ``done/`` (``sync=False``: caller syncs later)."""
        dest = self._inside(self.done, cand.name)
        if dest.exists() or dest.is_symlink():
            raise FileExistsError(f"done/{cand.name} already exists")
        if cand.signature and os.lstat(cand.path).st_ino != cand.signature[0][1]:
            raise OSError(f"{escape(cand.name)} was replaced while being processed")
        os.rename(cand.path, dest)
        self._remove_marker(cand.name)
        if sync:
            self.sync("done", "incoming")

    def _free_failed_name(self, base: str) -> str:
        k = 0
        while True:
            dest = numbered(base, k)
            if not (os.path.lexists(self.failed / dest) or os.path.lexists(self.failed / (dest + ".reason"))):
                return dest
            k += 1

    def quarantine(self, name: str, reason: str) -> Quarantine:
        """Write ``failed/<dest>.reason``, then move the entry (if still there) to ``failed/<dest>``.

        ``dest`` is the entry's own name when safe, else :func:`~.spool_names.quarantine_base`; duplicates are
        numbered. When the entry cannot be moved it stays in ``incoming/`` (its reason is withdrawn) and is
        remembered, so later scans skip it until it changes.
        """
        src = self.incoming / name
        try:
            if src.parent != self.incoming or name in ("", ".", ".."):
                raise FileNotFoundError(name)  # not an entry of incoming/: only its reason is written
            sig: tuple | None = signature(src)
        except FileNotFoundError:
            sig = None
        except OSError as exc:
            sig = (("error", exc.errno),)
        base = quarantine_base(name)
        line = one_line(reason)
        if base != name:
            line += f" [entry name: {escape(name)}]"
        try:
            dest = self._free_failed_name(base)
            reason_path = self._inside(self.failed, dest + ".reason")
            self.writer(reason_path, (line + "\n").encode("utf-8"))
        except OSError as exc:
            if sig is None:
                raise
            first = self.remember_unmovable(name, sig, f"cannot write its reason to failed/: {exc.strerror or exc}")
            return Quarantine(None, unmovable=self.unmovable[name][1], first_report=first)
        vanished = sig is None
        if not vanished:
            try:
                os.rename(src, self.failed / dest)  # renames a symlink itself, never its target
            except FileNotFoundError:
                vanished = True
            except OSError as exc:
                reason_path.unlink(missing_ok=True)
                assert sig is not None
                first = self.remember_unmovable(name, sig, f"cannot move to failed/: {exc.strerror or exc}")
                return Quarantine(None, unmovable=self.unmovable[name][1], first_report=first)
        self.unmovable.pop(name, None)
        self._remove_marker(name)
        with contextlib.suppress(OSError):  # the move happened; only its durability across a power cut is in doubt
            fsync_dir(self.failed)
        return Quarantine(dest, vanished=vanished)

    def move_failed(self, name: str, reason: str) -> str:
        """:meth:`quarantine`, raising ``OSError`` when the entry cannot be moved; returns its failed/ name."""
        q = self.quarantine(name, reason)
        if q.dest is None:
            raise OSError(q.unmovable)
        return q.dest

    def recover(self) -> int:
        """Remove temp files left by a crash; return how many."""
        n = 0
        for folder in (self.results, self.failed):
            for p in folder.glob(TMP_PREFIX + "*"):
                try:
                    p.unlink()
                    n += 1
                except OSError:
                    pass
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
            try:
                self.ino.read(timeout=int(max(seconds, 0.01) * 1000))
                return
            except OSError:
                self.close()  # polling from now on
                self.ino = None
        stop.wait(seconds)

    def close(self) -> None:
        if self.ino is not None:
            with contextlib.suppress(OSError):
                self.ino.close()
