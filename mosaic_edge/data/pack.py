"""``mosaic-edge pack``: convert a dataset into a :mod:`packed store <mosaic_edge.data.store>`, in parallel and
resumably.

Each split is cut into chunks of consecutive patches; worker processes read a chunk through the dataset's own
reader, put it on the model grid and write it into the split's memory-mapped arrays, then flush them and only
then write the chunk's marker (``<split>/chunks/<k>.json``, atomically). After an interruption -- Ctrl-C,
``kill -9``, a power cut -- rerunning the same command packs only the chunks without a marker. A patch whose
files are missing or corrupt (:class:`~mosaic_edge.errors.DataError`) is listed in the chunk marker and
skipped; ``report.json`` lists them all and the summary counts them. The disk space the remaining chunks need
is checked before anything is written. ``store.json`` is written last.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from mosaic_edge.contract import S1_BANDS, S2_BANDS
from mosaic_edge.data.base import PatchSource, RawPatch
from mosaic_edge.data.preprocess import stack_bands
from mosaic_edge.data.sources import STORE, SYNTHETIC, DataSpec
from mosaic_edge.data.store import (
    ARRAYS,
    FORMAT,
    FORMAT_VERSION,
    LABEL_DTYPE,
    OPTICAL_DTYPE,
    PLAN_JSON,
    REPORT_JSON,
    SAR_DTYPE,
    STORE_JSON,
    array_shapes,
    bytes_per_patch,
    is_store,
    read_json,
)
from mosaic_edge.environment import usable_cores
from mosaic_edge.errors import DataError, UserError
from mosaic_edge.version import __version__

SPLITS = ("train", "validation", "test")
RESAMPLING = ("bilinear, half-pixel centres (align_corners=False), no antialias: "
              "mosaic_edge.data.preprocess.resize_bilinear; S2 rounded to uint16")
# Head room kept free on the target disk beyond the store itself (file system metadata, other writers).
DISK_MARGIN_BYTES = 256 * 1024**2


@dataclass
class PackSummary:
    """What a pack run did."""

    out: Path
    counts: dict[str, int]  # patches packed per split
    skipped: list[dict[str, Any]] = field(default_factory=list)  # {"split", "index", "id", "error"}
    chunks_done_before: int = 0  # chunks found packed by an earlier, interrupted run
    chunks_total: int = 0
    seconds: float = 0.0
    already_complete: bool = False

    def line(self) -> str:
        n = sum(self.counts.values())
        parts = ", ".join(f"{s} {c}" for s, c in self.counts.items())
        resumed = (f"; resumed: {self.chunks_done_before} of {self.chunks_total} chunks were already packed"
                   if self.chunks_done_before else "")
        skipped = f"{len(self.skipped)} skipped (listed in {self.out / REPORT_JSON})" if self.skipped else "0 skipped"
        return f"packed {n} patches ({parts}) into {self.out}: {skipped}{resumed}"


# ---- the grid ---------------------------------------------------------------------------------------------
def to_grid(raw: RawPatch, patch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(sar float32 [2,P,P] dB, optical uint16 [12,P,P]) of a raw patch on the ``patch_size`` grid.

    S1 must already be on the grid (BigEarthNet, SEN12MS and the synthetic benchmark all deliver it so); S2 bands
    are resampled with the shared preprocessing's bilinear resampling and rounded to the nearest integer.
    Non-finite S2 values become 0, the L2A no-data value.
    """
    size = (patch_size, patch_size)
    sar = np.stack([np.asarray(raw.sar[b], dtype=np.float32) for b in S1_BANDS]) if all(
        b in raw.sar for b in S1_BANDS) else None
    if sar is None:
        raise DataError(f"{raw.id}: missing S1 bands {[b for b in S1_BANDS if b not in raw.sar]}")
    if sar.shape[1:] != size:
        raise DataError(f"{raw.id}: S1 grid {sar.shape[1:]}, the store's grid is {size}")
    optical = stack_bands(raw.optical, S2_BANDS, size, f"{raw.id} S2")
    optical = np.where(np.isfinite(optical), optical, 0.0)
    optical = np.clip(np.rint(optical), 0, np.iinfo(OPTICAL_DTYPE).max).astype(OPTICAL_DTYPE)
    return sar, optical


# ---- worker side ------------------------------------------------------------------------------------------
_SOURCES: dict[tuple[str, str], PatchSource] = {}


def _source(spec: dict[str, Any], split: str) -> PatchSource:
    key = (json.dumps(spec, sort_keys=True), split)
    if key not in _SOURCES:
        _SOURCES[key] = DataSpec.from_dict(spec).open(split)
    return _SOURCES[key]


def _write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically and durably (temp file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def pack_chunk(spec: dict[str, Any], out: str, split: str, chunk: int, start: int, stop: int,
               patch_size: int) -> dict[str, Any]:
    """Pack patches ``start:stop`` of ``split`` (a worker task); returns the chunk marker it wrote."""
    source = _source(spec, split)
    folder = Path(out) / split
    arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r+", allow_pickle=False) for name in ARRAYS}
    failed = []
    for i in range(start, stop):
        try:
            raw = source.read(i)
            sar, optical = to_grid(raw, patch_size)
            if raw.labels is None:
                raise DataError(f"{raw.id}: no labels")
            labels = np.asarray(raw.labels) > 0.5
            if labels.shape != (arrays["labels"].shape[1],):
                raise DataError(f"{raw.id}: {labels.shape[0]} labels, the store has {arrays['labels'].shape[1]}")
        except (DataError, OSError) as exc:
            failed.append({"index": i, "error": str(exc)})
            for a in arrays.values():
                a[i] = 0
            continue
        arrays["sar"][i] = sar
        arrays["optical"][i] = optical
        arrays["labels"][i] = labels
    for a in arrays.values():
        a.flush()  # the pixels are on disk before the marker that says so
    marker = {"start": start, "stop": stop, "failed": failed}
    _write_json(folder / "chunks" / f"{chunk}.json", marker)
    return {"split": split, "chunk": chunk, **marker}


# ---- main side ---------------------------------------------------------------------------------------------
class ProgressBar:
    """A one-line progress bar with rate and ETA on a terminal; a plain line every ``every_s`` otherwise."""

    def __init__(self, total: int, label: str = "pack", stream: TextIO | None = None, every_s: float = 10.0):
        self.total, self.label, self.stream = total, label, stream or sys.stderr
        self.done, self.t0, self.last, self.every_s = 0, time.perf_counter(), 0.0, every_s
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def text(self) -> str:
        el = time.perf_counter() - self.t0
        rate = self.done / el if el > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        frac = self.done / self.total if self.total else 1.0
        bar = "#" * int(24 * frac)
        eta_s = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "--:--:--"
        return (f"{self.label} [{bar:<24}] {self.done}/{self.total} patches {100 * frac:5.1f}% "
                f"{rate:7.1f} patches/s ETA {eta_s}")

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.tty:
            print("\r" + self.text(), end="", file=self.stream, flush=True)
        elif now - self.last >= self.every_s or self.done >= self.total:
            print(self.text(), file=self.stream, flush=True)
            self.last = now

    def close(self) -> None:
        if self.tty:
            print(file=self.stream, flush=True)


def _plan(spec: DataSpec, splits: Sequence[str], chunk_size: int) -> dict[str, Any]:
    """Source, contract, split sizes and chunking of a pack run (what ``pack.json`` records)."""
    contract = spec.contract()
    sources = {}
    for split in splits:
        try:
            sources[split] = spec.open(split)
        except UserError as exc:
            raise UserError(f"{spec.data}: cannot open split {split!r}: {exc}") from exc
    for split, src in sources.items():
        if tuple(src.classes) != tuple(contract.classes):
            raise UserError(f"{spec.data}: split {split} has other classes than the contract")
    src0 = next(iter(sources.values()))
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "source": {"kind": spec.kind, **spec.to_dict(), "reader": f"{type(src0).__module__}.{type(src0).__name__}",
                   "mosaic_edge_version": __version__},
        "contract": contract.to_dict(),
        "grid": {"patch_size": contract.patch_size, "resampling": RESAMPLING,
                 "dtypes": {"sar": str(SAR_DTYPE), "optical": str(OPTICAL_DTYPE), "labels": str(LABEL_DTYPE)}},
        "chunk_size": chunk_size,
        "splits": {s: len(src) for s, src in sources.items()},
        "_ids": {s: src.ids for s, src in sources.items()},
    }


def _comparable(plan: dict[str, Any]) -> dict[str, Any]:
    src = {k: v for k, v in plan["source"].items() if k != "mosaic_edge_version"}
    return {**{k: v for k, v in plan.items() if k not in ("_ids", "source")}, "source": src}


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def _check_disk(out: Path, need: int) -> None:
    free = shutil.disk_usage(out).free
    if free < need + DISK_MARGIN_BYTES:
        raise UserError(f"not enough disk space in {out}: the store needs {need / 1e9:.2f} GB more "
                        f"(+{DISK_MARGIN_BYTES / 1e9:.2f} GB margin), {free / 1e9:.2f} GB free")


def pack_dataset(
    spec: DataSpec,
    out: str | Path,
    workers: int | None = None,
    splits: Sequence[str] = SPLITS,
    chunk_size: int = 128,
    progress: TextIO | None = None,
    on_chunk: Callable[[dict[str, Any]], None] | None = None,
) -> PackSummary:
    """Pack ``splits`` of ``spec`` into the store folder ``out`` (see the module docstring).

    Args:
        spec: The dataset and its reader options (BigEarthNet v2 root, SEN12MS root or the synthetic benchmark).
        out: Store folder; created, or resumed when it holds an unfinished pack of the same plan.
        workers: Worker processes (default: the CPUs this process may use); 0 packs in this process.
        splits: Splits to pack.
        chunk_size: Patches per work item, the unit of resumption.
        progress: Stream for the progress bar (default stderr).
        on_chunk: Called with every finished chunk marker (tests use it).

    With worker processes (started by ``spawn``) a calling script must guard its entry point with
    ``if __name__ == "__main__":``, as for any process pool.

    Raises:
        UserError: ``out`` holds another pack or another dataset, the disk is too small, or the data is unusable.
    """
    t0 = time.perf_counter()
    out = Path(out)
    if spec.kind != SYNTHETIC:  # provenance and the workers name the root absolutely
        spec = DataSpec(str(Path(spec.data).resolve()), spec.options)
    if chunk_size < 1:
        raise UserError(f"chunk size must be >= 1, got {chunk_size}")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder")
    if (out / STORE_JSON).is_file():
        info = read_json(out / STORE_JSON)
        asked = json.loads(json.dumps(spec.to_dict()))  # as store.json spells it (tuples as lists)
        held = {k: info["source"].get(k) for k in asked}
        if held != asked:
            raise UserError(f"{out} holds a finished store of other data or options ({held['data']}, "
                            f"{held.get('options')}); use another --out")
        counts = {s: int(v["packed"]) for s, v in info["splits"].items()}
        report = read_json(out / REPORT_JSON) if (out / REPORT_JSON).is_file() else {"skipped": []}
        return PackSummary(out, counts, report["skipped"], already_complete=True)
    if out.is_dir() and any(out.iterdir()) and not is_store(out):
        raise UserError(f"{out} is a non-empty folder that is not a store; choose another --out")
    if spec.kind == STORE:
        raise UserError(f"{spec.data} is already a packed store")
    plan = _plan(spec, splits, chunk_size)
    out.mkdir(parents=True, exist_ok=True)
    if (out / PLAN_JSON).is_file():
        old = read_json(out / PLAN_JSON)
        if _comparable(old) != _comparable({k: v for k, v in plan.items() if k != "_ids"}):
            raise UserError(f"{out} holds an unfinished pack of other data or options ({old['source']['data']}, "
                            f"{old['source'].get('options')}); finish it with the same arguments or use another --out")
    ids = plan.pop("_ids")
    patch_size, num_classes = plan["contract"]["patch_size"], len(plan["contract"]["classes"])
    tasks, done_markers = [], []
    for split, n in plan["splits"].items():
        for k, (a, b) in enumerate(_chunks(n, chunk_size)):
            marker = out / split / "chunks" / f"{k}.json"
            if marker.is_file():
                done_markers.append({"split": split, "chunk": k, **read_json(marker)})
            else:
                tasks.append((split, k, a, b))
    need = sum(b - a for _, _, a, b in tasks) * bytes_per_patch(patch_size, num_classes)
    _check_disk(out, need)
    if not (out / PLAN_JSON).is_file():
        _write_json(out / PLAN_JSON, plan)
    dtypes: dict[str, np.dtype[Any]] = {"sar": SAR_DTYPE, "optical": OPTICAL_DTYPE, "labels": LABEL_DTYPE}
    for split, n in plan["splits"].items():
        folder = out / split
        (folder / "chunks").mkdir(parents=True, exist_ok=True)
        for name, shape in array_shapes(n, patch_size, num_classes).items():
            path = folder / f"{name}.npy"
            if not path.is_file():  # a sparse file (blocks are allocated as chunks are written), created atomically
                tmp = folder / f".{name}.npy.tmp"
                np.lib.format.open_memmap(tmp, mode="w+", dtype=dtypes[name], shape=shape).flush()
                os.replace(tmp, path)
        if not (folder / "ids.txt").is_file():
            tmp = folder / ".ids.txt.tmp"
            tmp.write_text("".join(f"{i}\n" for i in ids[split]))
            os.replace(tmp, folder / "ids.txt")
    bar = ProgressBar(sum(b - a for _, _, a, b in tasks), "pack", progress)
    markers = list(done_markers)
    spec_dict = plan["source"]["data"], plan["source"]["options"]
    job_spec = {"data": spec_dict[0], "options": spec_dict[1]}

    def finished(m: dict[str, Any]) -> None:
        markers.append(m)
        bar.update(m["stop"] - m["start"])
        if on_chunk:
            on_chunk(m)

    n_workers = usable_cores() if workers is None else workers
    try:
        if n_workers <= 0 or len(tasks) <= 1:
            for split, k, a, b in tasks:
                finished(pack_chunk(job_spec, str(out), split, k, a, b, patch_size))
        else:
            _run_pool(job_spec, out, tasks, patch_size, min(n_workers, len(tasks)), finished)
    except KeyboardInterrupt:
        bar.close()
        raise UserError(f"interrupted; {len(markers)} chunks are packed in {out}: rerun the same command to "
                        "finish") from None
    bar.close()
    return _finish(out, plan, ids, markers, len(done_markers), time.perf_counter() - t0)


def _run_pool(job_spec: dict[str, Any], out: Path, tasks: list[tuple[str, int, int, int]], patch_size: int,
              workers: int, finished: Callable[[dict[str, Any]], None]) -> None:
    # spawn, not fork: a forked child inherits the parent's threads' locks (e.g. an imported torch's) half-held.
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        pending: set[Future[dict[str, Any]]] = set()
        queue = list(reversed(tasks))
        try:
            while queue or pending:
                while queue and len(pending) < 2 * workers:  # bounded queue: an interruption loses little work
                    split, k, a, b = queue.pop()
                    pending.add(pool.submit(pack_chunk, job_spec, str(out), split, k, a, b, patch_size))
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    finished(fut.result())
        except BrokenProcessPool as exc:
            raise UserError(f"a pack worker died ({exc}; out of memory?): rerun the same command to resume") from exc
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _finish(out: Path, plan: dict[str, Any], ids: dict[str, list[str]], markers: list[dict[str, Any]],
            done_before: int, seconds: float) -> PackSummary:
    skipped, counts, split_info = [], {}, {}
    for split, n in plan["splits"].items():
        ok = np.ones(n, dtype=bool)
        for m in markers:
            if m["split"] != split:
                continue
            for f in m["failed"]:
                ok[f["index"]] = False
                skipped.append({"split": split, "index": f["index"], "id": ids[split][f["index"]],
                                "error": f["error"]})
        rows = np.flatnonzero(ok).astype(np.int64)
        np.save(out / split / "rows.npy", rows)
        counts[split] = int(len(rows))
        split_info[split] = {"total": n, "packed": int(len(rows)), "skipped": int(n - len(rows))}
    _write_json(out / REPORT_JSON, {"skipped": skipped})
    info = {k: v for k, v in plan.items() if k not in ("splits", "chunk_size")}
    info.update(splits=split_info, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    _write_json(out / STORE_JSON, info)
    for split in plan["splits"]:
        shutil.rmtree(out / split / "chunks", ignore_errors=True)
    total_chunks = sum(len(_chunks(n, plan["chunk_size"])) for n in plan["splits"].values())
    return PackSummary(out, counts, skipped, done_before, total_chunks, seconds)
