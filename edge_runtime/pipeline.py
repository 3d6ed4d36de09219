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
  on the raw values the host holds (:mod:`mosaic_edge.edge_runtime.drift`);
* :func:`result_files`: the JSON Lines (and GeoJSON) bytes of a finished tile, built once.

After inference, :func:`gather_windows` / :func:`store_rows` move the windows the borderline fallback re-runs
(:class:`~mosaic_edge.edge_runtime.safety.Reruns`) into the fallback runner's batch and its answers back.

One-shot prediction and the spool daemon therefore produce byte-for-byte the same records for the same tile
and runner (apart from timings).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mosaic_edge import patching
from mosaic_edge.contract import Contract
from mosaic_edge.data.preprocess import stack_bands
from mosaic_edge.data.tiff import GeoInfo
from mosaic_edge.edge_runtime import postprocess
from mosaic_edge.edge_runtime.drift import check_windows, strided_windows
from mosaic_edge.edge_runtime.runner import Runner
from mosaic_edge.edge_runtime.safety import Reruns, SafetyNet
from mosaic_edge.edge_runtime.tiles import PreparedTile, prepare_tile
from mosaic_edge.envelope import DriftCheck, sample
from mosaic_edge.errors import DataError
from mosaic_edge.tile_format import Tile, TileFiles, TileLimits, decode, read_files


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
    if not prepared.optical_usable:
        inv = np.ones(len(wins), np.float64)
    else:
        inv = patching.invalid_fractions(prepared.optical_invalid, wins)
    heads = postprocess.choose_heads(inv, limits.max_invalid_fraction)
    job = Job(prepared.id, name, wins, heads, inv, input_sha256, prepared.geo, source=prepared)
    shapes = {k: (len(wins), *(int(d) for d in v[1:])) for k, v in contract.input_shapes().items()}
    dtypes = {k: np.dtype(contract.input_dtype(k)) for k in shapes}
    if sum(int(np.prod(v)) * dtypes[k].itemsize for k, v in shapes.items()) <= precut_max_bytes:
        job.inputs = {k: np.empty(shapes[k], dtypes[k]) for k in shapes}
        patching.cut_into(job.inputs["sar"], prepared.sar, wins)
        patching.cut_into(job.inputs["optical"], prepared.optical, wins)
        job.source = None  # the tile's arrays (views into the file's bytes) can go
    return job


def fill(buffers: dict[str, np.ndarray], parts: Sequence[tuple[Job, int, int]]) -> dict[str, np.ndarray]:
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


def batch_inputs(runner: Runner, rows: int, parts: Sequence[tuple[Job, int, int]]) -> dict[str, np.ndarray]:
    """The model inputs of a batch: views of a job's cut windows when the batch lies in one job, else
    :func:`fill` into ``runner.input_buffers(rows)``."""
    if len(parts) == 1 and parts[0][0].inputs is not None:
        job, a, b = parts[0]
        assert job.inputs is not None
        return {name: arr[a:b] for name, arr in job.inputs.items()}
    return fill(runner.input_buffers(rows), parts)


# ---- the safety net's stages (drift on the reader side; the fallback's windows after inference) -------------
def drift(job: Job, prepared: PreparedTile, tile: Tile, contract: Contract, net: SafetyNet) -> None:
    """Drift check of every window of ``job`` against ``net.envelope`` (raw units), kept in ``job.drift``.

    Raw-input artefacts: the windows cut for the runner already hold raw values (the check samples them); a
    scene cut batch by batch, and standardised artefacts (whose host arrays are standardised), are sampled
    straight from the whole tile's raw arrays, non-finite values as the runtime's preparation replaces them.
    """
    env = net.envelope
    if env is None:
        return
    ns, step = env.n_sar, env.stride
    usable = prepared.optical_usable and (prepared.optical is not None)
    if contract.input_form == "raw" and job.inputs is not None:
        x = sample(job.inputs["sar"], job.inputs["optical"] if usable else None, step)
    else:
        fills: tuple[tuple[float, ...] | None, tuple[float, ...] | None]
        if contract.input_form == "raw":  # already filled by prepare
            sar, optical, fills = prepared.sar, prepared.optical, (None, None)
        else:  # the tile as read, in physical units (per-band files resampled onto the 10 m grid as prepare did)
            size = prepared.shape
            sar = (stack_bands(tile.sar, contract.sar_bands, size, "sar") if isinstance(tile.sar, dict)
                   else tile.sar)
            optical = (stack_bands(tile.optical, contract.optical_bands, size, "optical")
                       if isinstance(tile.optical, dict) else tile.optical)
            fills = (contract.sar_mean, contract.optical_mean)
        p = -(-contract.patch_size // step)
        x = np.empty((job.n, len(env.bands) if usable else ns, p, p), np.float32)
        strided_windows(sar, job.windows, step, x[:, :ns], fills[0])
        if usable:
            assert optical is not None
            strided_windows(optical, job.windows, step, x[:, ns:], fills[1])
        x = x.reshape(job.n, x.shape[1], p * p)
    inv = job.optical_invalid  # per window: a no-data pixel is an invalid one
    fused_inv = inv if "sar" not in job.heads else inv[[h == "fused" for h in job.heads]]
    job.drift = check_windows(env, x, job.heads, nodata_free=not fused_inv.any())
    job.drift_bands = env.bands


def gather_windows(buffers: dict[str, np.ndarray], parts: Sequence[tuple[Job, np.ndarray]]
                   ) -> dict[str, np.ndarray]:
    """Copy windows ``rows`` of each job, in order, into the first rows of ``buffers`` (the fallback runner's
    :meth:`~Runner.input_buffers`); return those rows. The windows come from the job's cut block, or are cut
    again from its whole-tile inputs (a scene cut batch by batch)."""
    row = 0
    for job, rows in parts:
        k = len(rows)
        for name, buf in buffers.items():
            if job.inputs is not None:
                np.take(job.inputs[name], rows, axis=0, out=buf[row:row + k])
            else:
                assert job.source is not None
                patching.cut_into(buf[row:row + k], getattr(job.source, name), [job.windows[i] for i in rows])
        row += k
    return {name: buf[:row] for name, buf in buffers.items()}


def store_rows(job: Job, rows: np.ndarray, outputs: dict[str, np.ndarray], precision: str) -> None:
    """Replace the head logits of windows ``rows`` of ``job`` by the fallback runner's (of ``precision``)."""
    for name in set(postprocess.HEAD_OUTPUTS.values()):
        job.logits[name][rows] = outputs[name]
    if job.answered_fallback is None:
        job.answered_fallback = np.zeros(job.n, bool)
    job.answered_fallback[rows] = True
    job.fallback_precision = precision
    job.rerun_pending -= len(rows)


def safety_fields(job: Job, runner: Runner) -> postprocess.SafetyFields:
    """The safety net's per-window record fields of ``job`` (served by ``runner``)."""
    return postprocess.SafetyFields(runner.precision, job.drift, job.drift_bands, job.answered_fallback,
                                    job.fallback_precision, job.rerun)


def store_outputs(job: Job, start: int, outputs: dict[str, np.ndarray]) -> None:
    """Keep the head logits of patches ``start .. start+len`` of ``job``."""
    k = len(next(iter(outputs.values())))
    for name in set(postprocess.HEAD_OUTPUTS.values()):
        if name not in job.logits:
            job.logits[name] = np.zeros((job.n, outputs[name].shape[1]), np.float32)
        job.logits[name][start:start + k] = outputs[name]
    job.n_done += k


def _extra(job: Job, runner: Runner) -> dict[str, Any]:
    return {"model_hash": runner.model_hash, "runner": runner.kind, "precision": runner.precision,
            "input_sha256": job.input_sha256,
            "timings_ms": {k: round(v, 3) for k, v in job.timings_ms.items()}}


def job_records(job: Job, runner: Runner) -> list[dict[str, Any]]:
    """The JSON Lines records of a finished job, as dicts."""
    scores = postprocess.patch_scores(job.logits, job.heads)
    return postprocess.tile_records(job.tile_id, job.windows, job.heads, scores, runner.contract,
                                    job.geo, job.optical_invalid, _extra(job, runner),
                                    safety=safety_fields(job, runner))


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


def infer_job(runner: Runner, job: Job, batch: int = 8, reruns: Reruns | None = None) -> None:
    """Run all windows of ``job`` through an active ``runner``, ``batch`` at a time; with ``reruns``, then the
    windows its fallback flags, in batches, through the fallback runner."""
    batch = min(batch, runner.max_batch or batch)
    for a in range(0, job.n, batch):
        b = min(a + batch, job.n)
        t0 = time.perf_counter()
        inputs = batch_inputs(runner, batch, [(job, a, b)])
        t1 = time.perf_counter()
        store_outputs(job, a, runner.infer(inputs))
        t2 = time.perf_counter()
        job.timings_ms["cut"] = job.timings_ms.get("cut", 0.0) + (t1 - t0) * 1e3
        job.timings_ms["infer"] = job.timings_ms.get("infer", 0.0) + (t2 - t1) * 1e3
        if reruns is not None:
            reruns.flag(job, job, a, b)
    if reruns is not None:
        for _ in reruns.run(everything=True):
            pass


def predict_paths(runner: Runner, paths: Iterable[str | Path], batch: int = 8, stride: int | None = None,
                  limits: TileLimits = TileLimits(), allow_sar_only: bool = True, net: SafetyNet | None = None,
                  reruns: Reruns | None = None) -> Iterator[tuple[Path, list[dict[str, Any]] | None, str | None]]:
    """One-shot prediction: yield ``(path, records, None)`` or ``(path, None, error)`` per tile.

    ``runner`` (and ``net``'s fallback runner) must be active. Explicitly named files are complete, so S1-only
    folders are SAR-only tiles. ``reruns`` (default: a queue over ``net`` with ``batch``) keeps the counts.
    """
    from mosaic_edge.edge_runtime.safety import RerunFailed

    if net is not None and reruns is None:
        reruns = Reruns(net, batch)
    for p in paths:
        path = Path(p)
        try:
            job = load(path, path.name.removesuffix(".npz"), runner.contract, limits, stride, allow_sar_only, net)
        except DataError as exc:
            yield path, None, str(exc)
            continue
        try:
            infer_job(runner, job, batch, reruns)
        except RerunFailed as exc:
            assert reruns is not None
            reruns.discard(job)
            yield path, None, str(exc)
            continue
        yield path, job_records(job, runner), None
