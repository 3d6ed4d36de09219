"""Names in the spool: which entries are tiles, what every derived name looks like, and how untrusted names are
shown and quarantined.

Entry names come from ``os.listdir``/``os.scandir`` on a ``str`` path, so any byte a file system allows arrives
as a ``str`` with undecodable bytes as lone surrogates (``surrogateescape``); the same ``str`` passed back to
``os`` calls reaches the same entry. Nothing here encodes such a name strictly: names are shown through
:func:`escape` (one printable ASCII line) and stored in ``failed/`` under :func:`quarantine_base`.

Every name the spool derives from a tile id fits the file system's 255-byte name limit (:data:`NAME_MAX`), for
the longest valid id (:data:`MAX_ID_BYTES`); :func:`derived_names` lists them and a test creates them all.
"""

from __future__ import annotations

import hashlib
import os
import re

NAME_MAX = 255  # bytes in one file name: ext4, xfs, btrfs, tmpfs (os.pathconf(dir, "PC_NAME_MAX"))
READY = ".ready"
TMP_PREFIX = ".tmp-"
TMP_SUFFIX_BYTES = 9  # "-" + 8 hex digits
# Longest tile id. The longest derived name is a numbered reason in failed/ while it is being written:
# ".tmp-" + <id>.npz + ".<k>" + ".reason" + "-<8 hex>" = id + 32 bytes with a 6-digit k (see derived_names).
MAX_ID_BYTES = 200
MAX_DUPLICATES = 999_999  # numbered copies of one name in failed/ (".1" ... ".999999")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_HASH_CHARS = 8
# Quarantine names keep this many characters of a sanitised long name, then "-" + a hash of the original.
_KEEP = MAX_ID_BYTES - _HASH_CHARS - 12


def nbytes(name: str) -> int:
    """Length of ``name`` in bytes as the file system stores it."""
    return len(os.fsencode(name))


def tile_id_of(name: str) -> str:
    return name[:-4] if name.endswith(".npz") else name


def valid_tile_id(tile_id: str) -> bool:
    """True for ids that are safe as file names in every spool folder, with every suffix the spool adds."""
    return (bool(_ID.fullmatch(tile_id)) and ".." not in tile_id and not tile_id.endswith(READY)
            and len(tile_id) <= MAX_ID_BYTES)


def escape(name: str) -> str:
    """``name`` as one printable ASCII line: its bytes, with ``\\xNN``/``\\n``/``\\\\`` escapes where needed."""
    return repr(os.fsencode(name))[2:-1]


def one_line(text: str, limit: int = 2000) -> str:
    """A reason or log text on one printable line (no control characters, no lone surrogates)."""
    out = []
    for ch in str(text):
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte carried by surrogateescape
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 32 or code == 127 or 0xD800 <= code <= 0xDFFF:
            out.append(" " if ch in "\t\n\r\v\f" else f"\\x{code:02x}" if code < 256 else f"\\u{code:04x}")
        else:
            out.append(ch)
    line = re.sub(r" {2,}", " ", "".join(out)).strip()
    return line if len(line) <= limit else line[: limit - 3] + "..."


def sanitise(name: str) -> str:
    """A safe file name derived from an untrusted one (letters, digits, ``.``, ``_``, ``-``; no ``..``)."""
    out = _UNSAFE.sub("_", name).replace("..", "__").lstrip(".-_")
    return out[:MAX_ID_BYTES] or "unnamed"


def quarantine_base(name: str) -> str:
    """The name an entry gets in ``failed/`` (before numbering): itself when safe and short, else sanitised.

    A name too long for every derived name to fit is cut and given a hash of its original bytes, so different
    long names stay apart and the failed/ name stays short; the reason file holds the original (escaped).
    """
    safe = sanitise(name)
    if safe == name and nbytes(name) <= MAX_ID_BYTES + len(".npz"):
        return name
    if nbytes(name) <= MAX_ID_BYTES and safe != "unnamed":
        return safe
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:_HASH_CHARS]
    stem = safe[:_KEEP].rstrip(".-_") if safe != "unnamed" else "entry"
    return f"{stem or 'entry'}-{digest}"


def numbered(base: str, k: int) -> str:
    """The ``k``-th name for ``base`` in ``failed/`` (0: ``base`` itself)."""
    if k > MAX_DUPLICATES:
        raise OSError(f"more than {MAX_DUPLICATES} entries named {base!r} in failed/")
    return base if k == 0 else f"{base}.{k}"


def temp_name(final: str) -> str:
    """Name of the temp file an atomic write of ``final`` goes through (same folder)."""
    return f"{TMP_PREFIX}{final}-{os.urandom(4).hex()}"


def derived_names(tile_id: str) -> dict[str, str]:
    """Every name the spool may create for a tile id, by purpose (the longest of each kind)."""
    npz = f"{tile_id}.npz"
    failed = numbered(npz, MAX_DUPLICATES)
    return {
        "incoming file": npz,
        "incoming marker": npz + READY,
        "incoming folder marker": tile_id + READY,
        "done": npz,
        "results": f"{tile_id}.jsonl",
        "results geojson": f"{tile_id}.geojson",
        "results temp": temp_name(f"{tile_id}.geojson"),
        "failed": failed,
        "failed reason": failed + ".reason",
        "failed reason temp": temp_name(failed + ".reason"),
    }
