"""The drift check of the INT8 safety net at run time: every window's raw values against the export's
calibration envelope (:mod:`mosaic_edge.envelope`), on the arrays the host already holds.

The check looks at a strided sample of each window (the envelope's ``stride``). For a raw-input artefact the
sample is taken from the windows already cut for the runner; for a scene cut batch by batch, or a standardised
artefact (whose host arrays are standardised), it is taken straight from the whole tile's raw arrays
(:func:`strided_windows`), never by cutting the windows first. Windows answered by the SAR head are judged on
their SAR bands alone (:func:`check_windows`). Cost: benchmarks/RESULTS.md, "Drift check cost at run time".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from mosaic_edge.contract import Contract
from mosaic_edge.data.preprocess import stack_bands
from mosaic_edge.envelope import DriftCheck, Envelope, sample
from mosaic_edge.patching import Window
from mosaic_edge.tile_format import Tile

if TYPE_CHECKING:
    from mosaic_edge.edge_runtime.tiles import PreparedTile


def _merge(n: int, parts: Sequence[tuple[np.ndarray, DriftCheck]], bands: int) -> DriftCheck:
    per_band, combined = np.zeros((n, bands)), np.zeros(n)
    distance, drifted = np.full(n, np.nan), np.zeros(n, bool)
    for rows, c in parts:
        per_band[rows], combined[rows], distance[rows], drifted[rows] = c.per_band, c.combined, c.distance, c.drifted
    return DriftCheck(per_band, combined, distance, drifted)


def check_windows(envelope: Envelope, x: np.ndarray, heads: Sequence[str], nodata_free: bool = False
                  ) -> DriftCheck:
    """Drift check of sampled raw windows; windows answered by the SAR head are judged on their SAR bands alone
    (their optical data is unusable, and the SAR head never sees it).

    Args:
        envelope: The calibration envelope.
        x: float32 [n, B, m]: the envelope's sample of every band of each window (SAR then optical;
            :func:`mosaic_edge.envelope.sample`, :func:`strided_windows`), or [n, n_sar, m] without optical.
        heads: Per window, "fused" or "sar".
        nodata_free: No window answered by the fused head holds an L2A no-data pixel (the runtime knows from
            preparing the tile), so the sample need not be searched for them.
    """
    ns = envelope.n_sar
    if x.shape[1] == ns or "fused" not in heads:
        return envelope.check_sample(x[:, :ns])
    valid = None if nodata_free else np.asarray(x[:, ns:].any(axis=1))  # L2A no-data: 0 in every band
    if "sar" not in heads:
        return envelope.check_sample(x, valid)
    fused = np.fromiter((h == "fused" for h in heads), bool, len(heads))
    sar_only = ~fused
    return _merge(len(heads), [(fused, envelope.check_sample(x[fused], None if valid is None else valid[fused])),
                               (sar_only, envelope.check_sample(x[sar_only, :ns]))], len(envelope.bands))


def strided_windows(bands: np.ndarray | Sequence[np.ndarray], wins: Sequence[Window], step: int,
                    out: np.ndarray, fill: Sequence[float] | None = None, nodata: float | None = None
                    ) -> np.ndarray:
    """Every ``step``-th row and column of each window of a whole tile, into float32 ``out`` [n, B, p, p].

    The same values as ``cut(...)[:, :, ::step, ::step]`` without cutting the windows: when every window starts
    on the ``step`` grid (the usual case), the tile is subsampled once and the small windows are taken from it.

    Args:
        bands: [B, H, W] array, or one [H, W] array per band.
        wins: Windows of the tile.
        step: The envelope's stride.
        out: Where the samples go (``p = ceil(patch / step)``).
        fill: Per band value replacing non-finite values and ``nodata`` (the band mean, as the runtime's
            preparation does); None: the bands hold none.
        nodata: The tile's declared no-data value (GeoTIFF tag), or None.
    """
    n, b, p = out.shape[0], out.shape[1], out.shape[-1]
    rows, cols = sorted({w.row for w in wins}), sorted({w.col for w in wins})
    grid_windows = len(rows) * len(cols) == n and [(w.row, w.col) for w in wins] == [
        (r, c) for r in rows for c in cols]
    if grid_windows and all(r % step == 0 for r in rows) and all(c % step == 0 for c in cols):
        # the tile's sample (a view), the rows and columns of every window (no gather when the windows tile
        # the sample, as a scene's do), moved into place in one copy
        grid = (bands[:, ::step, ::step] if isinstance(bands, np.ndarray)
                else np.stack([band[::step, ::step] for band in bands]))
        r_idx = ((np.asarray(rows) // step)[:, None] + np.arange(p)).ravel()
        c_idx = ((np.asarray(cols) // step)[:, None] + np.arange(p)).ravel()
        if not np.array_equal(r_idx, np.arange(len(r_idx))):
            grid = grid[:, r_idx]
        if not np.array_equal(c_idx, np.arange(len(c_idx))):
            grid = grid[:, :, c_idx]
        picked = grid[:, :len(r_idx), :len(c_idx)].reshape(b, len(rows), p, len(cols), p)
        np.copyto(out.reshape(len(rows), len(cols), b, p, p), picked.transpose(1, 3, 0, 2, 4), casting="unsafe")
    else:
        for k, w in enumerate(wins):
            for j, band in enumerate(bands):
                out[k, j] = band[w.row:w.row + w.height:step, w.col:w.col + w.width:step]
    if fill is not None:
        bad = ~np.isfinite(out)
        if nodata is not None and np.isfinite(nodata):
            bad |= out == np.float32(nodata)
        if bad.any():
            np.copyto(out, np.broadcast_to(np.asarray(fill, np.float32)[None, :, None, None], out.shape), where=bad)
    return out


def check_drift(envelope: Envelope, contract: Contract, wins: Sequence[Window], heads: Sequence[str],
                optical_invalid: np.ndarray, inputs: Mapping[str, np.ndarray] | None, prepared: PreparedTile,
                tile: Tile) -> DriftCheck:
    """Drift check of the windows ``wins`` of a prepared tile (or of a scene's region).

    Args:
        envelope / contract: The export's envelope; the model's contract (its input form).
        wins / heads / optical_invalid: The windows (in the coordinates of ``prepared``), which head answers
            each, and the share of each one's optical pixels that are unusable (no-data among them).
        inputs: The windows cut for the runner (None: cut batch by batch later). A raw-input artefact's hold
            raw values: they are sampled. Otherwise the sample comes from the whole tile: ``prepared`` (raw
            form, already filled), or ``tile`` as read (standardised form; per-band files resampled onto the
            10 m grid as prepare did, non-finite and declared no-data values replaced by the band mean as
            prepare does for raw inputs).
    """
    ns, step = envelope.n_sar, envelope.stride
    usable = prepared.optical_usable and prepared.optical is not None
    if contract.input_form == "raw" and inputs is not None:
        x = sample(inputs["sar"], inputs["optical"] if usable else None, step)
    else:
        fills: tuple[tuple[float, ...] | None, tuple[float, ...] | None] = (None, None)  # raw: filled by prepare
        nodata = (tile.sar_nodata, tile.optical_nodata)
        if contract.input_form == "raw":
            sar, optical = prepared.sar, prepared.optical
        else:
            size = prepared.shape
            sar = (stack_bands(tile.sar, contract.sar_bands, size, "sar") if isinstance(tile.sar, dict)
                   else tile.sar)
            optical = (stack_bands(tile.optical, contract.optical_bands, size, "optical")
                       if isinstance(tile.optical, dict) else tile.optical)
            fills = (contract.sar_mean, contract.optical_mean)
        p = -(-contract.patch_size // step)
        n = len(wins)
        x = np.empty((n, len(envelope.bands) if usable else ns, p, p), np.float32)
        strided_windows(sar, wins, step, x[:, :ns], fills[0], nodata[0])
        if usable:
            assert optical is not None
            strided_windows(optical, wins, step, x[:, ns:], fills[1], nodata[1])
        x = x.reshape(n, x.shape[1], p * p)
    fused_inv = optical_invalid if "sar" not in heads else optical_invalid[[h == "fused" for h in heads]]
    return check_windows(envelope, x, heads, nodata_free=not np.any(fused_inv))
