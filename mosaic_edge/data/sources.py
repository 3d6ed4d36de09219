"""Open a patch source by name or path, and the contract that goes with it.

``data`` is ``"synthetic"`` (the built-in benchmark, no download), a BigEarthNet v2 root (holds
``metadata.parquet``) or a SEN12MS root (holds ``ROIs*`` folders). A :class:`DataSpec` (data plus reader
options) is what training records in the checkpoint, so export and evaluation reopen exactly that data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
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


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Where a model's patches come from: recorded in its checkpoint (``extra["data_spec"]``).

    Attributes:
        data: ``"synthetic"`` or a dataset root.
        options: Reader options of :func:`open_source`, primitives only (synthetic: the ``SyntheticConfig``
            fields; BigEarthNet v2: ``include_snow_cloud``; SEN12MS: ``label_threshold``, ``split_file``).
    """

    data: str = SYNTHETIC
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)

    @property
    def kind(self) -> str:
        """``"synthetic"``, ``"benv2"`` or ``"sen12ms"`` (:func:`detect_kind`; the root must exist)."""
        return detect_kind(self.data)

    @property
    def name(self) -> str:
        """Short label for reports: ``synthetic`` or the root folder's name."""
        return SYNTHETIC if self.data == SYNTHETIC else Path(self.data).name or str(self.data)

    def open(self, split: str, **overrides: Any) -> PatchSource:
        """One split of the data, with the recorded options (``overrides`` win)."""
        return open_source(self.data, split, **{**self.options, **overrides})

    def contract(self) -> Contract:
        """Classes, patch size and normalisation statistics of this data (no thresholds tuned yet)."""
        if self.data == SYNTHETIC:
            return contract_for(self.open("train"))
        return contract_for(self.data, **self.options)

    def to_dict(self) -> dict[str, Any]:
        return {"data": str(self.data), "options": dict(self.options)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataSpec:
        if not isinstance(data, Mapping) or not isinstance(data.get("data"), str):
            raise UserError(f"not a data spec: {data!r}")
        return cls(data["data"], dict(data.get("options") or {}))
