"""Spool fuzzing: random spools of good tiles mixed with entries of every kind; every entry must get its answer.

    python benchmarks/spool_fuzz.py --entries 3000 --writers 4 --kills 20 [--write-seconds 60] [--seed 0] [--json OUT]

Harness shared with the property-based test (``tests/edge_runtime/test_spool_fuzz.py``, where Hypothesis draws
the plans): :func:`build` makes a spool from a :class:`Plan` (good single-patch ``.npz`` tiles, some as folders,
some with ``.ready`` markers, plus random entries: files, folders, symlinks to files / folders / nowhere / loops /
outside the spool, FIFOs, sockets, markers of every kind, names of any bytes up to 255), and :func:`check`
asserts the end state after the daemon drained it:

* every good tile has exactly one results file holding its input's SHA-256 and sits in ``done/``;
* every other entry (found by inode) is in ``failed/`` beside a one-line ``.reason``, or was reported as
  unmovable; regular ``.ready`` markers are gone; names starting with ``.`` are untouched;
* every name in ``failed/`` is short and safe, nothing else is in ``incoming/``, no temp file is left, and
  nothing outside the spool changed.

The long run here does the same at scale with writers dropping entries while a ``mosaic-edge serve`` subprocess
is SIGKILLed at random points and restarted, then a last ``serve --once`` drains the spool and :func:`check`
runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mosaic_edge.tile_format import fingerprint, write_tile

REPO = Path(__file__).resolve().parents[1]
GOOD_PREFIX = b"good-"
NAME_MAX = 255
KINDS = ("junk_file", "empty_file", "junk_npz", "folder_empty", "folder_junk", "folder_nested", "symlink_file",
         "symlink_outside", "symlink_folder", "symlink_dangling", "symlink_loop", "fifo", "socket",
         "marker_folder", "marker_symlink", "marker_fifo", "marker_socket", "marker_regular")
_SAFE = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class Entry:
    """One random entry of ``incoming/``: its raw name, kind, and whether a regular ``.ready`` marker joins it."""

    name: bytes
    kind: str
    marker: bool = False
    seed: int = 0


@dataclass
class Plan:
    good: list[tuple[int, str, bool]] = field(default_factory=list)  # (index, "file" | "folder", marker)
    entries: list[Entry] = field(default_factory=list)


@dataclass
class Built:
    """What :func:`build` made, by inode where names may change."""

    root: Path
    good: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # tile id -> (entry name, sha256)
    bad: dict[bytes, int] = field(default_factory=dict)  # entry name -> inode
    markers: set[bytes] = field(default_factory=set)  # regular .ready files (consumed or removed)
    hidden: dict[bytes, int] = field(default_factory=dict)  # dot-names: ignored by the daemon
    outside: dict[str, tuple] = field(default_factory=dict)  # snapshot of root/outside

    @property
    def spool(self) -> Path:
        return self.root / "spool"


def valid_name(name: bytes) -> bool:
    return (0 < len(name) <= NAME_MAX and b"/" not in name and b"\0" not in name and name not in (b".", b"..")
            and not name.startswith(GOOD_PREFIX))


def random_name(rng: random.Random) -> bytes:
    """A name of any bytes a Linux file name may hold, now and then right at the 255-byte limit."""
    style = rng.random()
    if style < 0.3:
        n = rng.choice([rng.randint(1, 12), rng.randint(190, NAME_MAX)])
        name = bytes(rng.choice(b"abcXYZ019_-.") for _ in range(n))
    elif style < 0.6:
        name = bytes(rng.randint(1, 255) for _ in range(rng.randint(1, 40))).replace(b"/", b"_")
    elif style < 0.8:
        name = b"%s.npz" % bytes(rng.choice(b"abc\xff\n -.") for _ in range(rng.randint(1, 30)))
    else:
        name = bytes(rng.choice(b"ab.") for _ in range(rng.randint(1, 20))) + b".ready" * rng.randint(1, 2)
    return name if valid_name(name) else b"x" + name.replace(b"\0", b"0")[: NAME_MAX - 1]


def good_tile(path: bytes, index: int, patch: int = 16) -> None:
    rng = np.random.default_rng(index)
    write_tile(os.fsdecode(path), rng.normal(-15, 4, (2, patch, patch)).astype(np.float32),
               rng.uniform(100, 4000, (12, patch, patch)).astype(np.uint16))


def _socket(path: bytes, scratch: Path) -> None:
    """A unix socket at ``path`` (bound at a short path, then renamed: sun_path holds 107 bytes)."""
    short = scratch / f"s{uuid.uuid4().hex[:8]}"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(short))
    os.rename(short, path)


def make_entry(incoming: bytes, entry: Entry, outside: Path, scratch: Path) -> None:
    """Create one random entry under ``incoming`` (bytes path)."""
    path = incoming + b"/" + entry.name
    rnd = random.Random(entry.seed)
    kind = entry.kind
    if kind in ("junk_file", "junk_npz", "marker_regular"):
        with open(path, "wb") as f:
            f.write(rnd.randbytes(rnd.randint(1, 300)) if kind != "marker_regular" else b"")
    elif kind == "empty_file":
        open(path, "wb").close()
    elif kind.startswith("folder") or kind == "marker_folder":
        os.mkdir(path)
        if kind in ("folder_junk", "folder_nested"):
            sub = path + b"/deeper/still" if kind == "folder_nested" else path
            os.makedirs(sub, exist_ok=True)
            for i in range(rnd.randint(1, 3)):
                with open(sub + b"/f%d.%s" % (i, rnd.choice([b"tif", b"npz", b"\xff"])), "wb") as f:
                    f.write(rnd.randbytes(rnd.randint(0, 100)))
    elif kind == "symlink_file":
        os.symlink(GOOD_PREFIX + b"0.npz", path)  # another entry of incoming/ (a good tile when there is one)
    elif kind == "symlink_outside":
        os.symlink(os.fsencode(outside / "secret.npz"), path)
    elif kind == "symlink_folder":
        os.symlink(os.fsencode(outside), path)
    elif kind == "symlink_dangling":
        os.symlink(b"nowhere/at/all", path)
    elif kind == "symlink_loop" or kind == "marker_symlink":
        os.symlink(entry.name, path)  # points at itself: ELOOP when followed
    elif kind in ("fifo", "marker_fifo"):
        os.mkfifo(path)
    elif kind in ("socket", "marker_socket"):
        _socket(path, scratch)
    else:
        raise ValueError(kind)


def entry_names(entries: list[Entry]) -> list[Entry]:
    """Markers named ``*.ready``; entries whose name (or marker) collides with an earlier one dropped."""
    seen: set[bytes] = set()
    out = []
    for e in entries:
        if e.kind.startswith("marker_") and not e.name.endswith(b".ready"):
            e = Entry(e.name[: NAME_MAX - 6] + b".ready", e.kind, e.marker, e.seed)
        names = {e.name} | ({e.name + b".ready"} if e.marker else set())
        if names & seen or (e.marker and len(e.name) + 6 > NAME_MAX):
            continue
        seen |= names
        out.append(e)
    return out


def snapshot(folder: Path) -> dict[str, tuple]:
    out = {}
    for root, dirs, files in os.walk(folder):
        for n in dirs + files:
            st = os.lstat(os.path.join(root, n))
            out[os.path.join(root, n)] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def build(root: Path, plan: Plan, scratch: Path | None = None) -> Built:
    """Create ``root/spool`` (filled per ``plan``) and ``root/outside`` (symlink targets)."""
    inc = root / "spool" / "incoming"
    inc.mkdir(parents=True)
    outside = root / "outside"
    outside.mkdir()
    good_tile(os.fsencode(outside / "secret.npz"), 999)
    built = Built(root)
    binc = os.fsencode(inc)
    for index, form, marker in plan.good:
        name = GOOD_PREFIX + b"%d" % index
        if form == "folder":
            os.mkdir(binc + b"/" + name)
            good_tile(binc + b"/" + name + b"/tile.npz", index)
        else:
            name += b".npz"
            good_tile(binc + b"/" + name, index)
        built.good[os.fsdecode(name).removesuffix(".npz")] = (name, fingerprint(inc / os.fsdecode(name)))
        if marker:
            open(binc + b"/" + name + b".ready", "wb").close()
            built.markers.add(name + b".ready")
    for e in entry_names(plan.entries):
        make_entry(binc, e, outside, scratch or root)
        record(built, binc, e.name)
        if e.marker:
            open(binc + b"/" + e.name + b".ready", "wb").close()
            record(built, binc, e.name + b".ready")
    built.outside = snapshot(outside)
    return built


def record(built: Built, incoming: bytes, name: bytes) -> None:
    st = os.lstat(incoming + b"/" + name)
    if name.startswith(b"."):
        built.hidden[name] = st.st_ino
    elif name.endswith(b".ready") and stat.S_ISREG(st.st_mode):
        built.markers.add(name)
    else:
        built.bad[name] = st.st_ino


def check(built: Built, unmovable: set[bytes] = frozenset()) -> list[str]:  # type: ignore[assignment]
    """Every property of the end state; returns the violations (empty: all hold)."""
    spool = built.spool
    problems: list[str] = []
    if sorted(os.listdir(built.root)) != ["outside", "spool"] or sorted(os.listdir(spool)) != [
            "done", "failed", "incoming", "results"]:
        problems.append(f"unexpected top-level entries: {sorted(os.listdir(built.root))} {os.listdir(spool)}")
    if snapshot(built.root / "outside") != built.outside:
        problems.append("something outside the spool changed")
    bfail = os.fsencode(spool / "failed")
    failed = {n: os.lstat(bfail + b"/" + n) for n in os.listdir(bfail)}
    results = {p.name for p in (spool / "results").iterdir()}
    for tile_id, (name, digest) in built.good.items():
        if not os.path.lexists(os.fsencode(spool / "done") + b"/" + name):
            problems.append(f"good tile {tile_id} not in done/")
        path = spool / "results" / f"{tile_id}.jsonl"
        recs = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
        if len(recs) == 2 and recs[0].get("type") == "tile" and recs[0].get("input_sha256") == digest:
            recs = recs[1:]  # the tile summary, then the one window of a fuzz tile
        if len(recs) != 1 or recs[0].get("input_sha256") != digest:
            problems.append(f"good tile {tile_id}: {len(recs)} result records (hash ok: "
                            f"{bool(recs) and recs[0].get('input_sha256') == digest})")
    extra = results - {f"{t}.{s}" for t in built.good for s in ("jsonl", "geojson")}
    if extra:
        problems.append(f"unexpected files in results/: {sorted(extra)[:5]}")
    by_inode = {st.st_ino: n for n, st in failed.items() if not n.endswith(b".reason")}
    binc = os.fsencode(spool / "incoming")
    left = set(os.listdir(binc))
    for name, ino in built.bad.items():
        if name in unmovable:
            if name not in left:
                problems.append(f"unmovable entry {name!r} left incoming/")
            continue
        dest = by_inode.get(ino)
        if dest is None:
            problems.append(f"entry {name!r} is not in failed/ (still in incoming/: {name in left})")
            continue
        reason = failed.get(dest + b".reason")
        if reason is None:
            problems.append(f"entry {name!r} is failed/{dest!r} without a reason")
            continue
        line = Path(os.fsdecode(bfail + b"/" + dest + b".reason")).read_bytes()
        if not line.endswith(b"\n") or line.count(b"\n") != 1 or any(c < 32 and c != 10 for c in line):
            problems.append(f"reason of {name!r} is not one printable line: {line[:200]!r}")
    for n in failed:
        if not _SAFE.fullmatch(n) or len(n) > NAME_MAX:
            problems.append(f"unsafe name in failed/: {n!r}")
        if n.startswith(b".tmp-"):
            problems.append(f"temp file left in failed/: {n!r}")
    for name, ino in built.hidden.items():
        if name not in left or os.lstat(binc + b"/" + name).st_ino != ino:
            problems.append(f"dot-name {name!r} was touched")
    stuck = unmovable & set(built.bad)
    allowed = set(built.hidden) | stuck | {n + b".ready" for n in stuck}
    if left - allowed:
        problems.append(f"left in incoming/: {sorted(left - allowed)[:5]}")
    if any(n.startswith(".tmp-") for n in results):
        problems.append("temp file left in results/")
    return problems


# ---- the long run: writers + SIGKILL ---------------------------------------------------------------------------
def random_plan(rng: random.Random, entries: int, good_fraction: float = 0.5, start: int = 0) -> Plan:
    plan = Plan()
    for i in range(entries):
        if rng.random() < good_fraction:
            plan.good.append((start + i, rng.choice(["file", "file", "folder"]), rng.random() < 0.3))
        else:
            plan.entries.append(Entry(random_name(rng), rng.choice(KINDS), rng.random() < 0.15,
                                      rng.randrange(1 << 30)))
    return plan


def writer(built: Built, plan: Plan, rng: random.Random, scratch: Path, lock: threading.Lock,
           seconds: float) -> None:
    """Drop a plan's entries into a live spool over about ``seconds``: good tiles under a dot-name then renamed
    in, everything else made in place, in random order."""
    inc = os.fsencode(built.spool / "incoming")
    pause = seconds / max(1, len(plan.good) + len(plan.entries))
    stage = os.fsencode(built.root / "staging")
    for index, form, marker in plan.good:
        name = GOOD_PREFIX + b"%d" % index
        tmp = stage + b"/" + name
        if form == "folder":
            os.mkdir(tmp)
            good_tile(tmp + b"/tile.npz", index)
        else:
            name += b".npz"
            tmp += b".npz"
            good_tile(tmp, index)
        digest = fingerprint(Path(os.fsdecode(tmp)))
        os.rename(tmp, inc + b"/" + name)
        with lock:
            built.good[os.fsdecode(name).removesuffix(".npz")] = (name, digest)
            if marker:
                open(inc + b"/" + name + b".ready", "wb").close()
        time.sleep(rng.uniform(0, 2 * pause))
    for e in entry_names(plan.entries):
        with lock:
            if os.path.lexists(inc + b"/" + e.name) or e.name in built.bad:
                continue
            try:
                make_entry(inc, e, built.root / "outside", scratch)
                record(built, inc, e.name)
            except OSError:  # taken by the daemon while being made (a marker-like name, a settled folder)
                pass
        time.sleep(rng.uniform(0, 2 * pause))


def _count(folder: Path) -> int:
    return sum(1 for n in os.listdir(folder) if not n.endswith(".reason")) if folder.is_dir() else 0


def serve_cmd(model: Path, spool: Path, once: bool) -> list[str]:
    return [sys.executable, "-m", "mosaic_edge", "serve", "--model", str(model), "--spool", str(spool),
            "--runner", "ort", "--settle-s", "0.5", "--poll-s", "0.1", "--threads", "1", "--batch", "8",
            "--max-wait-ms", "5", "--log-level", "warning", *(["--once"] if once else [])]


def run(model: Path, root: Path, entries: int, writers: int, kills: int, seed: int = 0,
        write_seconds: float = 60.0) -> dict:
    rng = random.Random(seed)
    scratch = Path(tempfile.mkdtemp(prefix="sf-", dir="/tmp"))
    built = build(root, Plan())
    (root / "staging").mkdir()
    plans = [random_plan(random.Random(seed * 1000 + w), entries // writers, start=w * entries)
             for w in range(writers)]
    lock = threading.Lock()
    threads = [threading.Thread(target=writer, args=(built, p, random.Random(w), scratch, lock, write_seconds))
               for w, p in enumerate(plans)]
    t0 = time.time()
    for t in threads:
        t.start()
    killed, rounds = 0, []
    while any(t.is_alive() for t in threads) or killed < kills:
        before = _count(built.spool / "done") + _count(built.spool / "failed")
        proc = subprocess.Popen(serve_cmd(model, built.spool, once=False), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 3.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed += 1
        rounds.append({"answered": _count(built.spool / "done") + _count(built.spool / "failed") - before,
                       "writers_active": any(t.is_alive() for t in threads)})
    for t in threads:
        t.join()
    (root / "staging").rmdir()
    t1 = time.time()
    final = subprocess.run(serve_cmd(model, built.spool, once=True), capture_output=True, text=True, timeout=1800)
    drained = time.time() - t1
    # Entries the writers made that the daemon consumed before they were recorded (markers) are not "bad".
    problems = check(built)
    reasons = len([n for n in os.listdir(built.spool / "failed") if n.endswith(".reason")])
    report = {"entries": sum(len(p.good) + len(p.entries) for p in plans), "good": len(built.good),
              "other": len(built.bad), "markers": len(built.markers), "hidden": len(built.hidden),
              "writers": writers, "sigkills": killed,
              "sigkills_while_writing": sum(r["writers_active"] for r in rounds),
              "answered_before_final_run": sum(r["answered"] for r in rounds),
              "final_exit": final.returncode, "reasons": reasons,
              "problems": len(problems), "first_problems": problems[:10],
              "seconds_with_kills": round(t1 - t0, 1), "seconds_final_drain": round(drained, 1)}
    report["ok"] = not problems and final.returncode == 0
    with contextlib.suppress(OSError):
        os.rmdir(scratch)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=3000)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--write-seconds", type=float, default=60.0, help="how long the writers keep writing")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", type=Path, default=None, help="default: the tests' tiny ONNX model (16 px)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="spool_fuzz-"))
    if args.model is None:
        sys.path.insert(0, str(REPO))
        from tests.support.runtime import tiny_contract, write_tiny_onnx

        args.model = write_tiny_onnx(work / "tiny.onnx", tiny_contract())
    report = run(args.model, work / "run", args.entries, args.writers, args.kills, args.seed, args.write_seconds)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
