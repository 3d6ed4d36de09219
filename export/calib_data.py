"""The calibration data of an export: ``--calib-data`` sources, the calibration set, and tensor ranges.

A SOURCE is anything :class:`~mosaic_edge.data.sources.DataSpec` opens (``synthetic``, a BigEarthNet v2 or
SEN12MS root, a packed store) or a folder of spool tiles (:class:`~mosaic_edge.data.windows.TileFolderSource`).
A data root contributes every split it holds (BigEarthNet v2: snowy/cloudy pairs too): the user named it as
deployment data, so all of it is calibration material. Every source is cut into the windows the runtime cuts
(:class:`~mosaic_edge.data.windows.WindowedSource`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mosaic_edge.contract import Contract
from mosaic_edge.data.base import PatchSource
from mosaic_edge.data.sources import SYNTHETIC, DataSpec
from mosaic_edge.data.windows import ConcatSource, SubsetSource, TileFolderSource, WindowedSource
from mosaic_edge.envelope import Envelope
from mosaic_edge.errors import UserError
from mosaic_edge.export.eval_sets import EVAL_SPLITS, open_splits
from mosaic_edge.export.parity import Samples, collect_samples

# Windows of each --calib-data source the fallback margin is also chosen on (deployment-like data) ...
TUNE_PER_SOURCE = 256
# ... taken among the windows the calibration set did not use when at least this many exist, else in-sample.
TUNE_MIN_HELD_OUT = 32


def open_calibration_source(source: str, contract: Contract) -> tuple[str, PatchSource]:
    """``(name for the report, windows of the source)``.

    Raises:
        UserError: neither a data root nor a folder of tiles, no samples, or classes unlike the model's.
    """
    if source == SYNTHETIC:
        spec: DataSpec | None = DataSpec(SYNTHETIC, {"patch_size": contract.patch_size})
    else:
        path = Path(source)
        if not path.is_dir():
            raise UserError(f"--calib-data {source}: neither 'synthetic' nor an existing folder")
        try:
            spec = DataSpec(source)
            spec.kind  # noqa: B018 - detects the kind; a plain folder is not a data root
        except UserError:
            spec = None
    if spec is None:
        return f"{Path(source).name} (tiles)", TileFolderSource(source, contract)
    splits = open_splits(spec, EVAL_SPLITS, contract, everything=True, required=False)
    if not splits:
        raise UserError(f"--calib-data {source}: no samples in splits {list(EVAL_SPLITS)}")
    name = spec.name + ("" if len(splits) == len(EVAL_SPLITS) else f" ({'+'.join(s.split for s in splits)})")
    return name, WindowedSource(ConcatSource(splits), contract)


def open_calibration_sources(sources: tuple[str, ...], contract: Contract) -> list[tuple[str, PatchSource]]:
    """:func:`open_calibration_source` of each SOURCE, in order (repeated names get a ``#k`` suffix)."""
    out: list[tuple[str, PatchSource]] = []
    for source in sources:
        name, src = open_calibration_source(source, contract)
        taken = {n for n, _ in out}
        out.append((name if name not in taken else f"{name} #{len(out) + 1}", src))
    return out


def calibration_set(contract: Contract, data: DataSpec, size: int, seed: int, calib_file: str | None = None,
                    calib_data: tuple[str, ...] = ()
                    ) -> tuple[dict[str, np.ndarray], list[dict[str, Any]], list[tuple[str, PatchSource]]]:
    """The calibration set (``id`` included when sampled), where it came from (one row per source) and the
    opened ``--calib-data`` sources.

    Args:
        data: The export data; its training split is the default source.
        calib_file: A saved ``calib.npz`` used as is. calib_data: ``--calib-data`` sources, drawn across evenly.
    """
    from mosaic_edge.calibration import load_calibration_set, sample_calibration_set
    from mosaic_edge.calibration.sampling import SourceDraw, sample_across_sources
    from mosaic_edge.export.eval_sets import open_splits, set_name

    if calib_file:
        calib = load_calibration_set(calib_file, contract)
        n = len(calib["sar"])
        return calib, [SourceDraw(str(calib_file), n, n).to_dict()], []
    if calib_data:
        sources = open_calibration_sources(calib_data, contract)
        calib, draws = sample_across_sources(sources, contract, size, seed)
        return calib, [d.to_dict() for d in draws], sources
    (train,) = open_splits(data, ("train",), contract)
    calib = sample_calibration_set(train, contract, size=size, seed=seed, return_ids=True)
    return calib, [SourceDraw(set_name(data, "train"), len(train), len(calib["sar"])).to_dict()], []


def calibrated_ranges(qdq_onnx: Path) -> dict[str, tuple[float, float]]:
    """Quantized activation tensor -> (lowest, highest) value its QuantizeLinear represents."""
    from mosaic_edge.calibration.quantize import qdq_params

    out = {}
    for r in qdq_params(qdq_onnx):
        if r["op"] != "QuantizeLinear" or r["scale"] is None:
            continue
        scale = float(np.asarray(r["scale"]).reshape(-1)[0])
        zp = 0 if r["zero_point"] is None else int(np.asarray(r["zero_point"]).reshape(-1)[0])
        info = np.iinfo(np.dtype(r["dtype"] or "int8"))
        out[r["input"]] = (scale * (info.min - zp), scale * (info.max - zp))
    return out


def tuning_windows(sources: list[tuple[str, PatchSource]], calib_ids: set[str], contract: Contract,
                   envelope: Envelope, seed: int) -> list[Samples]:
    """Per ``--calib-data`` source, up to :data:`TUNE_PER_SOURCE` windows to choose the fallback margin on:
    windows the calibration set did not take when at least :data:`TUNE_MIN_HELD_OUT` exist, else (a small
    source) windows it did -- the set's name says which."""
    out = []
    for k, (name, src) in enumerate(sources):
        ids = src.ids
        order = np.random.default_rng(seed + 7919 * (k + 1)).permutation(len(src))
        held = [int(i) for i in order if ids[i] not in calib_ids][:TUNE_PER_SOURCE]
        in_sample = len(held) < TUNE_MIN_HELD_OUT
        picked = [int(i) for i in order[:TUNE_PER_SOURCE]] if in_sample else held
        label = f"{name} ({'calibration windows' if in_sample else 'held-out windows'})"
        out.append(collect_samples(label, [SubsetSource(src, sorted(picked))], contract, envelope=envelope))
    return out
