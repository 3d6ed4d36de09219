"""The per-tile stages shared by the daemon, ``mosaic-edge predict`` and the profiler.

``read -> verify -> prepare -> cut -> (inference) -> postprocess -> write``, one function per stage, so every
caller runs -- and the profiler times -- exactly the same code:

* :func:`read`: the tile's files, each read once into memory, decoded into raw arrays
  (:func:`mosaic_edge.tile_format.read_files` / :func:`~mosaic_edge.tile_format.decode`);
* :func:`verify`: the SHA-256 of those bytes (a tile's identity for exactly-once; no second read);
* :func:`prepare`: whole-tile model inputs in the artefact's input form, per-pixel optical validity, the
  mostly-invalid-SAR rule (:func:`mosaic_edge.edge_runtime.tiles.prepare_tile`);
* :func:`cut`: window positions, per-window optical invalid fractions and the answering head, and the windows
  themselves cast into one contiguous block per tile (in the runner's input dtype) -- so the thread that feeds
  the engine only moves whole blocks (:func:`batch_inputs`: a view when a batch lies in one tile, else one
  copy per tile into the runner's :meth:`~Runner.input_buffers`); a large tile, whose windows would take more
  than :data:`PRECUT_MAX_BYTES`, is cut straight into the batch buffers by :func:`fill` instead;
* :func:`drift`: the INT8 safety net's drift check of every window against the export's calibration envelope,
  on the raw values the host holds (:mod:`mosaic_edge.edge_runtime.drift`; a scene's piece by piece);
* :func:`result_files`: the JSON Lines (and GeoJSON) bytes of a finished tile, built once.

After inference, the windows the borderline fallback flags are re-run by the higher-precision runner
(:class:`~mosaic_edge.edge_runtime.safety.Reruns`) before the tile's records are built.

A scene (:mod:`mosaic_edge.scene`: a GeoTIFF pair too large to hold) never exists whole in memory:
:func:`open_job` gives its :class:`Job` (all window positions, row-major; the per-window answers) and a generator
of :class:`Piece` s -- blocks of windows read, prepared and cut region by region, about
:attr:`~mosaic_edge.tile_format.TileLimits.chunk_bytes` each -- that the daemon queues one at a time, so its
bounded queues bound memory for scenes as for tiles. The SHA-256 is streamed alongside and set on the job
before the last piece is handed out; the results are written once, when every window is answered.

One-shot prediction and the spool daemon therefore produce byte-for-byte the same records for the same tile
and runner (apart from timings).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mosaic_edge import patching
from mosaic_edge.contract import Contract
from mosaic_edge.data.tiff import GeoInfo
from mosaic_edge.edge_runtime import postprocess
from mosaic_edge.edge_runtime.drift import check_drift
from mosaic_edge.edge_runtime.runner import Runner
from mosaic_edge.edge_runtime.safety import RerunFailed, Reruns, SafetyNet
from mosaic_edge.edge_runtime.tiles import PreparedTile, check_crs, prepare_tile
from mosaic_edge.envelope import DriftCheck
from mosaic_edge.errors import DataError
from mosaic_edge.scene import Scene, open_scene
from mosaic_edge.tile_format import Tile, TileFiles, TileLimits, decode, read_files, tile_files


@dataclass(eq=False)  # identity semantics: jobs are dict keys
class Job:
    """One tile cut into windows, collecting the model outputs of its patches.

    Attributes:
        windows: Patch positions, row-major.
        heads: Per window, "fused" or "sar" (which logits answer).
        optical_invalid: Per window, the fraction of unusable optical pixels.
        input_sha256: Identity of the input (recorded in every result record).
        geo: Georeferencing of the tile (None: records carry no bounds).
        inputs: The windows, cut: input name -> [n, C, P, P] in the input dtype; None when they are cut from
            ``source`` batch by batch.
        source: Whole-tile inputs (only while ``inputs`` is None).
        timings_ms: Host time per stage of this tile.
        drift: Drift check of every window (None: the export has no envelope); ``drift_bands`` names its bands.
        rerun: uint8 per window, why the fallback re-ran it (bits of :data:`.postprocess.RERUN_REASONS`; None:
            no window was flagged).
        answered_fallback: bool per window, answered by the fallback runner (None: none was).
        fallback_precision: Precision of the fallback runner that answered.
        rerun_pending: Windows queued for the fallback and not yet answered.
    """

    tile_id: str
    name: str
    windows: list[patching.Window]
    heads: list[str]
    optical_invalid: np.ndarray
    input_sha256: str
    geo: GeoInfo | None = None
    inputs: dict[str, np.ndarray] | None = None
    source: PreparedTile | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    n_done: int = 0
    logits: dict[str, np.ndarray] = field(default_factory=dict)
    failed: bool = False  # set once; its remaining windows are dropped and it is never committed
    drift: DriftCheck | None = None
    drift_bands: tuple[str, ...] = ()
    rerun: np.ndarray | None = None
    answered_fallback: np.ndarray | None = None
    fallback_precision: str | None = None
    rerun_pending: int = 0

    @property
    def n(self) -> int:
        return len(self.windows)

    @property
    def complete(self) -> bool:
        """Every window answered, the fallback's re-runs included."""
        return self.n_done == self.n and self.rerun_pending == 0

    def reasons(self) -> np.ndarray:
        """:attr:`rerun`, allocated (all 0) on first use."""
        if self.rerun is None:
            self.rerun = np.zeros(self.n, np.uint8)
        return self.rerun

    def set_drift(self, rows: slice | np.ndarray, check: DriftCheck, bands: tuple[str, ...]) -> None:
        """Keep the drift check of windows ``rows`` (a scene's are checked piece by piece)."""
        if self.drift is None:
            n = self.n
            self.drift = DriftCheck(np.zeros((n, len(bands))), np.zeros(n), np.full(n, np.nan), np.zeros(n, bool))
            self.drift_bands = bands
        for name in ("per_band", "combined", "distance", "drifted"):
            getattr(self.drift, name)[rows] = getattr(check, name)


@dataclass(eq=False)
class Piece:
    """Windows ``index`` of a scene's ``job``, cut (``inputs``: row k = window ``index[k]``).

    Offers what :func:`batch_inputs` / :func:`fill` and :func:`store_outputs` use of a :class:`Job`, in its own
    row numbering, so the daemon batches pieces and small tiles alike.
    """

    job: Job
    index: np.ndarray
    inputs: dict[str, np.ndarray] | None
    windows: list[patching.Window]  # in the coordinates of ``source``
    source: PreparedTile | None = None

    @property
    def n(self) -> int:
        return len(self.index)


def unit_rows(unit: Job | Piece, a: int, b: int) -> np.ndarray:
    """The job's window indices of windows ``a:b`` of a job or of a piece of one."""
    return unit.index[a:b] if isinstance(unit, Piece) else np.arange(a, b)


# ---- the stages --------------------------------------------------------------------------------------------
def read(path: Path, tile_id: str, limits: TileLimits = TileLimits(),
         allow_sar_only: bool = False) -> tuple[TileFiles, Tile]:
    """Read a tile's files once and decode them (raises DataError / MissingPartnerError on a bad tile)."""
    files = read_files(path, limits)
    return files, decode(files, tile_id, limits, allow_sar_only)


def verify(files: TileFiles) -> str:
    """The tile's SHA-256 over the bytes :func:`read` holds (equal to :func:`~mosaic_edge.tile_format.fingerprint`)."""
    return files.sha256()


def prepare(tile: Tile, contract: Contract, limits: TileLimits = TileLimits()) -> PreparedTile:
    """Whole-tile inputs in ``contract.input_form`` (see :mod:`mosaic_edge.edge_runtime.tiles`)."""
    return prepare_tile(tile, contract, limits)


# A tile's windows are cut into one contiguous block when it takes at most this much: a 120 px tile of 48 px
# windows takes 1.2 MB. A 1200 x 1200 px scene of 120 px windows would take 80 MB of fresh memory (page faults
# cost more than the copy); it is cut batch by batch into the runner's reused buffers instead, and queued
# scenes hold no more than their input.
PRECUT_MAX_BYTES = 8 << 20


def cut(prepared: PreparedTile, contract: Contract, name: str, input_sha256: str, stride: int | None = None,
        limits: TileLimits = TileLimits(), precut_max_bytes: int = PRECUT_MAX_BYTES) -> Job:
    """Plan the windows of a prepared tile (positions, optical invalid fractions, heads) and cut them into one
    contiguous block of the contract's input dtype when it fits in ``precut_max_bytes``."""
    height, width = prepared.shape
    wins = patching.windows(height, width, contract.patch_size, stride)
    inv, heads = _plan_windows(prepared, wins, limits)
    job = Job(prepared.id, name, wins, heads, inv, input_sha256, prepared.geo, source=prepared)
    if len(wins) * _window_bytes(contract) <= precut_max_bytes:
        job.inputs = _cut_windows(prepared, wins, contract)
        job.source = None  # the tile's arrays (views into the file's bytes) can go
    return job


def _plan_windows(prepared: PreparedTile, wins: list[patching.Window], limits: TileLimits
                  ) -> tuple[np.ndarray, list[str]]:
    """Optical invalid fraction and answering head of each window (all optical unusable: the SAR head)."""
    inv = (np.ones(len(wins), np.float64) if not prepared.optical_usable
           else patching.invalid_fractions(prepared.optical_invalid, wins))
    return inv, postprocess.choose_heads(inv, limits.max_invalid_fraction)


def _window_bytes(contract: Contract) -> int:
    """Bytes of one window's model inputs."""
    return sum(math.prod(int(d) for d in v[1:]) * np.dtype(contract.input_dtype(k)).itemsize
               for k, v in contract.input_shapes().items())


def _cut_windows(prepared: PreparedTile, wins: list[patching.Window], contract: Contract
                 ) -> dict[str, np.ndarray]:
    """The windows of a prepared tile (or scene region) as one block per input, in the contract's dtype."""
    inputs = {k: np.empty((len(wins), *(int(d) for d in v[1:])), np.dtype(contract.input_dtype(k)))
              for k, v in contract.input_shapes().items()}
    patching.cut_into(inputs["sar"], prepared.sar, wins)
    patching.cut_into(inputs["optical"], prepared.optical, wins)
    return inputs


def fill(buffers: dict[str, np.ndarray], parts: Sequence[tuple[Job | Piece, int, int]]) -> dict[str, np.ndarray]:
    """Copy windows ``a:b`` of each job, in order, into the first rows of ``buffers``; return those rows.

    Args:
        buffers: ``{"sar": [M, 2, P, P], "optical": [M, 12, P, P]}`` in the runner's input dtype, with ``M``
            at least the number of windows in ``parts`` (:meth:`Runner.input_buffers`).
        parts: ``(job, a, b)`` slices of jobs' windows.
    """
    row = 0
    for job, a, b in parts:
        for name, buf in buffers.items():
            if job.inputs is not None:
                buf[row:row + b - a] = job.inputs[name][a:b]  # one contiguous copy
            else:
                assert job.source is not None
                patching.cut_into(buf[row:row + b - a], getattr(job.source, name), job.windows[a:b])
        row += b - a
    return {name: buf[:row] for name, buf in buffers.items()}


def batch_inputs(runner: Runner, rows: int, parts: Sequence[tuple[Job | Piece, int, int]]) -> dict[str, np.ndarray]:
    """The model inputs of a batch: views of a job's cut windows when the batch lies in one job, else
    :func:`fill` into ``runner.input_buffers(rows)``."""
    if len(parts) == 1 and parts[0][0].inputs is not None:
        job, a, b = parts[0]
        assert job.inputs is not None
        return {name: arr[a:b] for name, arr in job.inputs.items()}
    return fill(runner.input_buffers(rows), parts)


# ---- the safety net's stages (drift on the reader side; the record fields) ---------------------------------
def drift(job: Job, prepared: PreparedTile, tile: Tile, contract: Contract, net: SafetyNet) -> None:
    """Drift check of every window of ``job`` against ``net.envelope`` (raw units), kept in ``job.drift``
    (:func:`mosaic_edge.edge_runtime.drift.check_drift`; none without an envelope)."""
    if net.envelope is not None:
        check = check_drift(net.envelope, contract, job.windows, job.heads, job.optical_invalid, job.inputs,
                            prepared, tile)
        job.set_drift(slice(None), check, net.envelope.bands)


def safety_fields(job: Job, runner: Runner) -> postprocess.SafetyFields:
    """The safety net's per-window record fields of ``job`` (served by ``runner``)."""
    return postprocess.SafetyFields(runner.precision, job.drift, job.drift_bands, job.answered_fallback,
                                    job.fallback_precision, job.rerun)


def store_outputs(unit: Job | Piece, start: int, outputs: dict[str, np.ndarray]) -> None:
    """Keep the head logits of patches ``start .. start+len`` of a job (or of a piece of one)."""
    k = len(next(iter(outputs.values())))
    job = unit.job if isinstance(unit, Piece) else unit
    rows: slice | np.ndarray = unit.index[start:start + k] if isinstance(unit, Piece) else slice(start, start + k)
    for name in set(postprocess.HEAD_OUTPUTS.values()):
        if name not in job.logits:
            job.logits[name] = np.zeros((job.n, outputs[name].shape[1]), np.float32)
        job.logits[name][rows] = outputs[name]
    job.n_done += k


def _extra(job: Job, runner: Runner) -> dict[str, Any]:
    return {"model_hash": runner.model_hash, "runner": runner.kind, "precision": runner.precision,
            "input_sha256": job.input_sha256,
            "timings_ms": {k: round(v, 3) for k, v in job.timings_ms.items()}}


def job_records(job: Job, runner: Runner) -> list[dict[str, Any]]:
    """The JSON Lines records of a finished job, as dicts: the tile summary, then one record per window."""
    scores = postprocess.patch_scores(job.logits, job.heads)
    extra = _extra(job, runner)
    safety = safety_fields(job, runner)
    summary = postprocess.tile_summary(job.tile_id, job.windows, job.heads, scores, runner.contract, job.geo, extra,
                                       safety=safety)
    return [summary, *postprocess.tile_records(job.tile_id, job.windows, job.heads, scores, runner.contract,
                                               job.geo, job.optical_invalid, extra, safety=safety)]


def result_files(job: Job, runner: Runner) -> tuple[bytes, bytes | None]:
    """A finished job's result files: the ``.jsonl`` bytes and the ``.geojson`` bytes (None without geo).

    The same bytes as ``to_jsonl(job_records(...))`` / ``to_geojson(...)``, encoded in one go per tile.
    """
    scores = postprocess.patch_scores(job.logits, job.heads)
    return postprocess.encode_tile(job.tile_id, job.windows, job.heads, scores, runner.contract,
                                   job.geo, job.optical_invalid, _extra(job, runner),
                                   safety=safety_fields(job, runner))


# ---- a whole tile ------------------------------------------------------------------------------------------
def load(path: Path, tile_id: str, contract: Contract, limits: TileLimits = TileLimits(),
         stride: int | None = None, allow_sar_only: bool = False, net: SafetyNet | None = None) -> Job:
    """read -> verify -> prepare -> cut (-> drift, when ``net`` has an envelope) of one tile, each stage's time
    in ``job.timings_ms``."""
    t0 = time.perf_counter()
    files, tile = read(path, tile_id, limits, allow_sar_only)
    t1 = time.perf_counter()
    digest = verify(files)
    t2 = time.perf_counter()
    prepared = prepare(tile, contract, limits)
    t3 = time.perf_counter()
    job = cut(prepared, contract, path.name, digest, stride, limits)
    t4 = time.perf_counter()
    job.timings_ms.update({"read": (t1 - t0) * 1e3, "verify": (t2 - t1) * 1e3, "prepare": (t3 - t2) * 1e3,
                           "cut": (t4 - t3) * 1e3})
    if net is not None and net.envelope is not None:
        drift(job, prepared, tile, contract, net)
        job.timings_ms["drift"] = (time.perf_counter() - t4) * 1e3
    return job


def infer_job(runner: Runner, job: Job | Piece, batch: int = 8, reruns: Reruns | None = None) -> None:
    """Run all windows of ``job`` (or of a piece of one) through an active ``runner``, ``batch`` at a time; with
    ``reruns``, queue the windows its fallback must re-run (the caller runs them: ``reruns.run``)."""
    batch = min(batch, runner.max_batch or batch)
    timings = job.job.timings_ms if isinstance(job, Piece) else job.timings_ms
    for a in range(0, job.n, batch):
        b = min(a + batch, job.n)
        t0 = time.perf_counter()
        inputs = batch_inputs(runner, batch, [(job, a, b)])
        t1 = time.perf_counter()
        store_outputs(job, a, runner.infer(inputs))
        t2 = time.perf_counter()
        timings["cut"] = timings.get("cut", 0.0) + (t1 - t0) * 1e3
        timings["infer"] = timings.get("infer", 0.0) + (t2 - t1) * 1e3
        if reruns is not None:
            whole = job.job if isinstance(job, Piece) else job
            reruns.flag(whole, whole, unit_rows(job, a, b), inputs)


def predict_paths(runner: Runner, paths: Iterable[str | Path], batch: int = 8, stride: int | None = None,
                  limits: TileLimits = TileLimits(), allow_sar_only: bool = True, net: SafetyNet | None = None,
                  reruns: Reruns | None = None) -> Iterator[tuple[Path, list[dict[str, Any]] | None, str | None]]:
    """One-shot prediction: yield ``(path, records, None)`` or ``(path, None, error)`` per tile.

    ``runner`` (and ``net``'s fallback runner) must be active. Explicitly named files are complete, so S1-only
    folders are SAR-only tiles. ``reruns`` (default: a queue over ``net`` with ``batch``) keeps the counts.
    """
    if net is not None and reruns is None:
        reruns = Reruns(net, batch)
    for p in paths:
        path = Path(p)
        job = None
        try:
            job, units = open_job(path, path.name.removesuffix(".npz"), runner.contract, limits, stride,
                                  allow_sar_only, net)
            for unit in units:
                infer_job(runner, unit, batch, reruns)
            if reruns is not None:
                for _ in reruns.run(everything=True):
                    pass
        except (DataError, RerunFailed) as exc:  # a scene may fail after its first pieces queued re-runs
            if reruns is not None and job is not None:
                reruns.discard(job)
            yield path, None, str(exc)
            continue
        yield path, job_records(job, runner), None


# ---- scenes ------------------------------------------------------------------------------------------------
def _maybe_scene(path: Path, limits: TileLimits) -> bool:
    """A cheap first test (two ``stat`` calls): could this folder be a scene? (:func:`open_scene` decides.)"""
    total = 0
    for name in ("s1.tif", "s2.tif"):
        try:
            total += os.stat(path / name, follow_symlinks=False).st_size
        except OSError:
            continue
    return total >= limits.chunk_bytes // 4


def open_job(path: Path, tile_id: str, contract: Contract, limits: TileLimits = TileLimits(),
             stride: int | None = None, allow_sar_only: bool = False, net: SafetyNet | None = None
             ) -> tuple[Job, Iterator[Job | Piece]]:
    """A tile's job and the units to infer: the job itself for a tile read whole (:func:`load`), pieces of it
    for a scene (module docstring). Exhaust or close the iterator; a bad scene region raises from it. With
    ``net``'s envelope every window is drift-checked (a scene's piece by piece).

    Raises:
        DataError / MissingPartnerError: as :func:`load`.
    """
    if path.is_dir() and _maybe_scene(path, limits):
        scene = open_scene(path, tile_id, tile_files(path, limits), limits, allow_sar_only)
        if scene is not None:
            try:
                job = _scene_job(scene, path.name, contract, limits, stride)
            except BaseException:
                scene.close()
                raise
            return job, _scene_pieces(scene, job, contract, limits, net)
    job = load(path, tile_id, contract, limits, stride, allow_sar_only, net)
    return job, iter([job])


def _scene_job(scene: Scene, name: str, contract: Contract, limits: TileLimits, stride: int | None) -> Job:
    height, width = scene.shape
    if scene.geo is not None and scene.geo.crs:
        check_crs(scene.geo.crs, scene.tile_id)
    p = contract.patch_size
    if height < p or width < p:
        raise DataError(f"{scene.tile_id}: tile of {height}x{width} pixels is smaller than the {p}x{p} model patch")
    wins = patching.windows(height, width, p, stride)
    if len(wins) > limits.max_windows:
        raise DataError(f"{scene.tile_id}: {len(wins)} windows exceed the limit of {limits.max_windows}")
    return Job(scene.tile_id, name, wins, ["fused"] * len(wins), np.zeros(len(wins)), "", scene.geo)


def scene_blocks(job: Job, patch: int, pixel_bytes: int, chunk_bytes: int) -> list[np.ndarray]:
    """The scene's windows grouped into square blocks whose region takes about ``chunk_bytes`` (pixels at
    ``pixel_bytes``), row-major; each block as the job's window indices, row-major within the block."""
    rows = sorted({w.row for w in job.windows})
    cols = sorted({w.col for w in job.windows})
    side = max(patch, int((chunk_bytes / max(1, pixel_bytes)) ** 0.5))
    step = rows[1] - rows[0] if len(rows) > 1 else patch
    k = max(1, (side - patch) // max(1, step) + 1)
    grid = np.arange(len(rows) * len(cols)).reshape(len(rows), len(cols))
    return [grid[i:i + k, j:j + k].ravel() for i in range(0, len(rows), k) for j in range(0, len(cols), k)]


def _scene_pieces(scene: Scene, job: Job, contract: Contract, limits: TileLimits, net: SafetyNet | None = None
                  ) -> Iterator[Piece]:
    """Read, prepare and cut a scene block by block (see the module docstring); closes the scene at the end."""
    p = contract.patch_size
    cut_bytes = _window_bytes(contract) // (p * p)  # per pixel of the cut windows
    blocks = scene_blocks(job, p, scene.bytes_per_pixel + cut_bytes, limits.chunk_bytes)
    sar_bad = sar_all = 0.0
    t = job.timings_ms
    try:
        for b, index in enumerate(blocks):
            t0 = time.perf_counter()
            wins = [job.windows[i] for i in index]
            r0, c0 = wins[0].row, wins[0].col
            r1, c1 = wins[-1].row + p, wins[-1].col + p
            tile = scene.region(r0, c0, r1 - r0, c1 - c0)
            t1 = time.perf_counter()
            scene.hasher.advance((b + 1) / len(blocks))
            t2 = time.perf_counter()
            prepared = prepare_tile(tile, contract, limits, check_sar=False)
            sar_bad += prepared.sar_invalid_fraction * (r1 - r0) * (c1 - c0)
            sar_all += (r1 - r0) * (c1 - c0)
            t3 = time.perf_counter()
            local = [patching.Window(w.row - r0, w.col - c0, w.height, w.width) for w in wins]
            inv, heads = _plan_windows(prepared, local, limits)
            job.optical_invalid[index] = inv
            for i, head in zip(index.tolist(), heads, strict=True):
                job.heads[i] = head
            inputs = _cut_windows(prepared, local, contract)
            t_cut = time.perf_counter()
            if net is not None and net.envelope is not None:
                job.set_drift(index, check_drift(net.envelope, contract, local, [job.heads[i] for i in index], inv,
                                                 inputs, prepared, tile), net.envelope.bands)
            t4 = time.perf_counter()
            if b == len(blocks) - 1:
                job.input_sha256 = scene.finish()
                if sar_all and sar_bad / sar_all > limits.max_invalid_fraction:
                    raise DataError(f"{scene.tile_id}: {sar_bad / sar_all:.0%} of S1 pixels are invalid "
                                    f"(NaN/inf/nodata), limit {limits.max_invalid_fraction:.0%}")
            t5 = time.perf_counter()
            stages = [("read", t1 - t0), ("verify", t2 - t1 + t5 - t4), ("prepare", t3 - t2), ("cut", t_cut - t3)]
            for stage, dt in stages + ([("drift", t4 - t_cut)] if net is not None and net.envelope else []):
                t[stage] = t.get(stage, 0.0) + dt * 1e3
            yield Piece(job, index, inputs, local)
    finally:
        scene.close()
