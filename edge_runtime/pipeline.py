"""The per-tile steps shared by the daemon and ``mosaic-edge predict``: read -> prepare -> cut -> records.

Keeping them here means one-shot prediction and the spool daemon produce byte-for-byte the same records for
the same tile and runner (apart from timings).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mosaic_edge import patching
from mosaic_edge.contract import Contract
from mosaic_edge.data.tiff import GeoInfo
from mosaic_edge.edge_runtime import postprocess
from mosaic_edge.edge_runtime.runner import Runner, run_batched
from mosaic_edge.edge_runtime.tiles import prepare_tile
from mosaic_edge.errors import DataError
from mosaic_edge.tile_format import TileLimits, fingerprint, read_tile


@dataclass(eq=False)  # identity semantics: jobs are dict keys and queue items
class Job:
    """One tile cut into patches, waiting for (or collecting) model outputs."""

    tile_id: str
    name: str
    sar: np.ndarray  # float32 [n, 2, P, P]
    optical: np.ndarray  # float32 [n, 12, P, P]
    windows: list[patching.Window]
    heads: list[str]
    optical_invalid: np.ndarray
    geo: GeoInfo | None
    input_sha256: str
    timings_ms: dict[str, float]
    marker: bool = False
    enqueued: float = 0.0
    next_index: int = 0  # first patch not yet handed to a batch
    n_done: int = 0
    logits: dict[str, np.ndarray] = field(default_factory=dict)
    candidate: Any = None  # the spool entry it came from (daemon only)
    failed: bool = False

    @property
    def n(self) -> int:
        return len(self.windows)


def load_job(path: Path, tile_id: str, contract: Contract, limits: TileLimits = TileLimits(),
             stride: int | None = None, allow_sar_only: bool = False, input_sha256: str | None = None) -> Job:
    """Read and preprocess one tile and cut it into patches (raises DataError on a bad tile)."""
    t0 = time.perf_counter()
    digest = input_sha256 or fingerprint(path)
    tile = read_tile(path, tile_id, limits, allow_sar_only=allow_sar_only)
    t1 = time.perf_counter()
    prep = prepare_tile(tile, contract, limits)
    height, width = prep.shape
    wins = patching.windows(height, width, contract.patch_size, stride)
    inv = patching.invalid_fractions(prep.optical_invalid, wins)
    heads = postprocess.choose_heads(inv, limits.max_invalid_fraction)
    sar, opt = patching.cut(prep.sar, wins), patching.cut(prep.optical, wins)
    if not (np.isfinite(sar).all() and np.isfinite(opt).all()):
        raise DataError(f"{tile_id}: non-finite values after preprocessing")
    t2 = time.perf_counter()
    timings = {"read": (t1 - t0) * 1e3, "preprocess": (t2 - t1) * 1e3}
    return Job(tile_id, path.name, sar, opt, wins, heads, inv, prep.geo, digest, timings)


def store_outputs(job: Job, start: int, outputs: dict[str, np.ndarray]) -> None:
    """Keep the head logits of patches ``start .. start+len`` of ``job``."""
    k = len(next(iter(outputs.values())))
    for name in set(postprocess.HEAD_OUTPUTS.values()):
        if name not in job.logits:
            job.logits[name] = np.zeros((job.n, outputs[name].shape[1]), np.float32)
        job.logits[name][start:start + k] = outputs[name]
    job.n_done += k


def job_records(job: Job, runner: Runner) -> list[dict[str, Any]]:
    """The JSON Lines records of a finished job."""
    scores = postprocess.patch_scores(job.logits, job.heads)
    extra = {"model_hash": runner.model_hash, "runner": runner.kind, "precision": runner.precision,
             "input_sha256": job.input_sha256,
             "timings_ms": {k: round(v, 3) for k, v in job.timings_ms.items()}}
    return postprocess.tile_records(job.tile_id, job.windows, job.heads, scores, runner.contract, job.geo,
                                    job.optical_invalid, extra)


def result_files(job: Job, runner: Runner) -> tuple[list[dict[str, Any]], bytes, bytes | None]:
    """A finished job's records and the bytes of its result files (``.jsonl``, ``.geojson`` or None)."""
    records = job_records(job, runner)
    return records, postprocess.to_jsonl(records), postprocess.to_geojson(records)


def predict_paths(runner: Runner, paths: Iterable[str | Path], batch: int = 8, stride: int | None = None,
                  limits: TileLimits = TileLimits(), allow_sar_only: bool = True
                  ) -> Iterator[tuple[Path, list[dict[str, Any]] | None, str | None]]:
    """One-shot prediction: yield ``(path, records, None)`` or ``(path, None, error)`` per tile.

    ``runner`` must be active. Explicitly named files are complete, so S1-only folders are SAR-only tiles.
    """
    for p in paths:
        path = Path(p)
        try:
            tile_id = path.name.removesuffix(".npz")
            job = load_job(path, tile_id, runner.contract, limits, stride, allow_sar_only)
        except DataError as exc:
            yield path, None, str(exc)
            continue
        t0 = time.perf_counter()
        out = run_batched(runner, job.sar, job.optical, batch)
        job.timings_ms["infer"] = (time.perf_counter() - t0) * 1e3
        store_outputs(job, 0, out)
        yield path, job_records(job, runner), None
