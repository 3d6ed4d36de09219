"""Scanning ``incoming/``: what each entry is, when it is ready, and which entries are skipped as unmovable.

Each entry is looked at with ``lstat`` (never following a symlink) behind its own error boundary, so one odd
entry never stops the scan of the others: a tile (a regular ``<id>.npz`` file or a folder with a valid id)
becomes a :class:`Candidate` once ready; anything else becomes a candidate with a ``problem`` (the one-line
reason it goes to ``failed/`` with), after the same settle time, so a writer's in-place temp file is not
taken away mid-write. A regular ``.ready`` file is a marker: consumed with its tile, removed when its tile is
absent for ``marker_grace_s``. Entries that could not be moved are remembered and skipped until they change
or ``unmovable_retry_s`` passes.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from mosaic_edge.edge_runtime.spool_names import MAX_ID_BYTES, READY, escape, nbytes, tile_id_of, valid_tile_id
from mosaic_edge.errors import UserError

MAX_SIGNATURE = 1000  # files looked at per folder per scan: bounded work on hostile folders
_KINDS = ((stat.S_ISREG, "regular file"), (stat.S_ISDIR, "folder"), (stat.S_ISLNK, "symlink"),
          (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
          (stat.S_ISBLK, "block device"))


class SpoolGone(UserError):
    """A spool folder was removed, replaced or made unreadable while the daemon ran."""


def kind_of(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "special file")


@dataclass
class Candidate:
    """An entry of ``incoming/`` that is ready to be taken (or, with ``problem``, to be quarantined)."""

    name: str
    path: Path
    tile_id: str
    marker: bool
    age_s: float  # seconds since it last changed
    signature: tuple = ()  # what it looked like when found ready (see Spool.recheck)
    problem: str | None = None  # not a tile: the one-line reason it goes to failed/ with


def signature(path: Path) -> tuple:
    """What an entry looks like now: mode, inode, size, mtime (and for a folder, of what it holds).

    Raises:
        OSError: The entry cannot be looked at (``FileNotFoundError``: it is gone).
    """
    st = os.lstat(path)
    sig: list[tuple] = [(st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns)]
    if stat.S_ISDIR(st.st_mode):
        errors: list[OSError] = []
        for root, dirs, files in os.walk(path, onerror=errors.append):
            for name in sorted(dirs + files):
                try:
                    s = os.lstat(os.path.join(root, name))
                    sig.append((root, name, s.st_mode, s.st_size, s.st_mtime_ns))
                except OSError as exc:
                    sig.append((root, name, "error", exc.errno))
            if len(sig) > MAX_SIGNATURE:
                break
        sig += [("error", e.filename, e.errno) for e in errors]
    return tuple(sig)


class IncomingScan:
    """Readiness and classification of the entries of one ``incoming/`` folder (see the module docstring).

    Args:
        incoming: The folder.
        settle_s: Seconds without change after which an unmarked entry is ready.
        marker_grace_s: Age after which a ``.ready`` marker whose tile is absent is removed (default: the
            larger of ``settle_s`` and 1 s, so a marker written just before its tile survives).
        unmovable_retry_s: An entry that could not be moved is retried after this long (or when it changes).
    """

    def __init__(self, incoming: Path, settle_s: float, marker_grace_s: float | None = None,
                 unmovable_retry_s: float = 600.0):
        self.incoming = incoming
        self.settle_s = settle_s
        self.marker_grace_s = max(settle_s, 1.0) if marker_grace_s is None else marker_grace_s
        self.unmovable_retry_s = unmovable_retry_s
        self._seen: dict[str, tuple[tuple, float]] = {}
        # name -> (signature, reason, retry after (monotonic)); read by the metrics gauge
        self.unmovable: dict[str, tuple[tuple, str, float]] = {}

    def _scan_entries(self, present: set[str], skip: set[str] | frozenset[str],
                      now: float) -> tuple[list[Candidate], int]:
        ready, pending = [], 0
        for name in present:
            if name.startswith(".") or name in skip:
                continue
            try:
                found = self._inspect(name, present, now)
            except Exception as exc:  # noqa: BLE001 - one entry never stops the scan
                found = self._unreadable(name, (("broken", type(exc).__name__),), now,
                                         f"{type(exc).__name__}: {exc}")
            if isinstance(found, Candidate):
                ready.append(found)
            elif found == "pending":
                pending += 1
        for gone in set(self._seen) - present:
            del self._seen[gone]
        for gone in set(self.unmovable) - present:
            del self.unmovable[gone]
        return ready, pending

    def _inspect(self, name: str, present: set[str], now: float) -> Candidate | str | None:
        """One entry: a Candidate when ready, "pending" while settling, None when there is nothing to do."""
        path = self.incoming / name
        try:
            sig = signature(path)
        except FileNotFoundError:
            return None  # vanished between listing and looking
        except OSError as exc:
            return self._unreadable(name, (("error", exc.errno),), now, exc.strerror or str(exc))
        if self._skipped_unmovable(name, sig, now):
            return None
        mode = sig[0][0]
        if name.endswith(READY):
            target = name[: -len(READY)]
            if stat.S_ISREG(mode):
                if target in present and not target.startswith(".") and not target.endswith(READY):
                    return None  # the marker of a tile: consumed with it
                return self._stale_marker(name, sig, now)
            return self._ready_if_settled(name, sig, now, False, f"marker {escape(name)} is a {kind_of(mode)}, "
                                          "expected an empty regular file")
        marker = name + READY in present and self._is_regular(self.incoming / (name + READY))
        return self._ready_if_settled(name, sig, now, marker, self._problem(name, mode))

    def _unreadable(self, name: str, sig: tuple, now: float, error: str) -> Candidate | str | None:
        if self._skipped_unmovable(name, sig, now):
            return None
        return self._ready_if_settled(name, sig, now, False, f"{escape(name)}: cannot inspect entry ({error})")

    @staticmethod
    def _is_regular(path: Path) -> bool:
        try:
            return stat.S_ISREG(os.lstat(path).st_mode)
        except OSError:
            return False

    @staticmethod
    def _problem(name: str, mode: int) -> str | None:
        """Why an entry is not a tile, or None when it is one."""
        tile_id = tile_id_of(name)
        if stat.S_ISLNK(mode):
            return f"{escape(name)}: is a symlink (refused)"
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            return f"{escape(name)}: is a {kind_of(mode)}, not a tile file or folder"
        if not valid_tile_id(tile_id) or (stat.S_ISREG(mode) and not name.endswith(".npz")):
            size = nbytes(tile_id)
            long = f" (id of {size} bytes; at most {MAX_ID_BYTES})" if size > MAX_ID_BYTES else ""
            return (f"invalid tile name {escape(name)}{long}: expected <id>.npz or a folder <id>/ with id of "
                    "letters, digits, '.', '_', '-' (no '..')")
        return None

    def _ready_if_settled(self, name: str, sig: tuple, now: float, marker: bool,
                          problem: str | None) -> Candidate | str:
        old = self._seen.get(name)
        if old is None or old[0] != sig:
            self._seen[name] = (sig, now)
        age = now - self._seen[name][1]
        if marker or age >= self.settle_s:
            return Candidate(name, self.incoming / name, tile_id_of(name), marker, age, sig, problem)
        return "pending"

    def _stale_marker(self, name: str, sig: tuple, now: float) -> Candidate | str | None:
        """A regular ``.ready`` whose tile is absent (left by a crash between a move and the marker's removal,
        or written before its tile): removed once older than ``marker_grace_s``; one that cannot be removed
        is quarantined like any other entry (and reported once if it cannot be moved either)."""
        try:
            age = time.time() - os.lstat(self.incoming / name).st_mtime
            if age <= self.marker_grace_s:
                return "pending"
            (self.incoming / name).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            return self._ready_if_settled(name, sig, now, True, f"stale marker {escape(name)} cannot be removed "
                                          f"({exc.strerror or exc})")
        return None

    def recheck(self, cand: Candidate) -> str:
        """Before reading: ``"same"`` as when found ready, ``"changed"`` (settle again) or ``"gone"``."""
        try:
            sig = signature(cand.path)
        except FileNotFoundError:
            return "gone"
        except OSError:
            return "same"  # reading it reports the error
        if not cand.signature or sig == cand.signature:
            return "same"
        self._seen[cand.name] = (sig, time.monotonic())
        return "changed"

    def _skipped_unmovable(self, name: str, sig: tuple, now: float) -> bool:
        known = self.unmovable.get(name)
        if known is None:
            return False
        if known[0] == sig[:1] and now < known[2]:
            return True
        self.unmovable[name] = (known[0], known[1], -1.0)  # changed or due: tried again, reported only if new
        return False

    def remember_unmovable(self, name: str, sig: tuple, reason: str, now: float | None = None) -> bool:
        """Remember an entry that cannot be moved; True when it was not known before (report it)."""
        known = self.unmovable.get(name)
        retry = (now or time.monotonic()) + self.unmovable_retry_s
        self.unmovable[name] = (sig[:1], reason, retry)
        return known is None or known[1] != reason

