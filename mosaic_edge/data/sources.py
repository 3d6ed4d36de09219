"""Open a patch source by name or path, and the contract that goes with it.

``data`` is ``"synthetic"`` (the built-in benchmark, no download), a BigEarthNet v2 root (holds
``metadata.parquet``) or a SEN12MS root (holds ``ROIs*`` folders).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from mosaic_edge.contract import Contract
from mosaic_edge.data.base import PatchSource
from mosaic_edge.errors import UserError

SYNTHETIC = "synthetic"


def detect_kind(data: str | Path) -> str:
    """``"synthetic"``, ``"benv2"`` or ``"sen12ms"`` for a data argument; :class:`UserError` otherwise."""
    if str(data) == SYNTHETIC:
        return SYNTHETIC
    root = Path(data)
    if not root.is_dir():
        raise UserError(f"data {str(data)!r} is neither 'synthetic' nor an existing dataset folder")
    if (root / "metadata.parquet").is_file():
        return "benv2"
    if any(p.is_dir() for p in root.glob("ROIs*")):
        return "sen12ms"
    raise UserError(
        f"{root}: not a BigEarthNet v2 root (no metadata.parquet) nor a SEN12MS root (no ROIs* folders)"
    )


def open_source(data: str | Path = SYNTHETIC, split: str = "train", **kw: Any) -> PatchSource:
    """Open one split of a dataset.

    Args:
        data: ``"synthetic"`` or a dataset root folder.
        split: ``train``, ``validation`` (``val``) or ``test``.
        **kw: Passed on: synthetic -> ``config=SyntheticConfig`` or its fields (``seed``, ``n_train``, ...);
            BigEarthNet v2 -> ``include_snow_cloud``; SEN12MS -> ``label_threshold``, ``split_file``.
    """
    kind = detect_kind(data)
    if kind == SYNTHETIC:
        from mosaic_edge.data.synthetic import SyntheticConfig, SyntheticMosaic

        config = kw.pop("config", None) or SyntheticConfig()
        known = {f.name for f in dataclasses.fields(SyntheticConfig)}
        unknown = sorted(set(kw) - known)
        if unknown:
            raise UserError(f"unknown synthetic options {unknown}; known: {sorted(known)}")
        return SyntheticMosaic(dataclasses.replace(config, **kw), split)
    if kind == "benv2":
        from mosaic_edge.data.benv2 import BigEarthNetV2

        return BigEarthNetV2(data, split, **kw)
    from mosaic_edge.data.sen12ms import SEN12MS

    return SEN12MS(data, split, **kw)


def contract_for(data_or_source: str | Path | PatchSource = SYNTHETIC, **kw: Any) -> Contract:
    """The contract (classes, patch size, normalisation statistics) for a dataset or an opened source.

    BigEarthNet v2 gets the published train-split statistics; the synthetic benchmark and SEN12MS get
    statistics computed from their own train split. ``kw`` are the :func:`open_source` options when a
    name/path is given.
    """
    from mosaic_edge.data.benv2 import BigEarthNetV2, benv2_contract
    from mosaic_edge.data.sen12ms import SEN12MS, sen12ms_contract
    from mosaic_edge.data.synthetic import SyntheticMosaic, synthetic_contract

    source = data_or_source
    if isinstance(source, (str, Path)):
        if detect_kind(source) == "benv2":
            return benv2_contract()
        source = open_source(source, "train", **kw)
    if isinstance(source, SyntheticMosaic):
        return synthetic_contract(source.config)
    if isinstance(source, BigEarthNetV2):
        return benv2_contract()
    if isinstance(source, SEN12MS):
        return sen12ms_contract(source.train_source())
    raise UserError(f"no contract known for a source of type {type(source).__name__}")
