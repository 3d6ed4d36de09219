"""Open a patch source by name or path, and the contract that goes with it.

``data`` is ``"synthetic"`` (the built-in benchmark, no download), a packed store written by ``mosaic-edge pack``
(holds ``store.json``), a BigEarthNet v2 root (holds ``metadata.parquet``) or a SEN12MS root (holds ``ROIs*``
folders). A :class:`DataSpec` (data plus reader options) is what training records in the checkpoint, so export
and evaluation reopen exactly that data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mosaic_edge.contract import Contract
from mosaic_edge.data.base import PatchSource
from mosaic_edge.errors import UserError

SYNTHETIC = "synthetic"
STORE = "store"
# Reader options each kind accepts (a packed store takes none: they were fixed when it was packed).
READER_OPTIONS: dict[str, tuple[str, ...]] = {
    "benv2": ("include_snow_cloud",),
    "sen12ms": ("label_threshold", "split_file"),
    STORE: (),
}


def detect_kind(data: str | Path) -> str:
    """The kind of a data argument: ``"synthetic"``, ``"store"``, ``"benv2"`` or ``"sen12ms"``.

    Raises:
        UserError: none of them.
    """
    from mosaic_edge.data.store import is_store

    if str(data) == SYNTHETIC:
        return SYNTHETIC
    root = Path(data)
    if not root.is_dir():
        raise UserError(f"data {str(data)!r} is neither 'synthetic' nor an existing dataset folder")
    if is_store(root):
        return STORE
    if (root / "metadata.parquet").is_file():
        return "benv2"
    if any(p.is_dir() for p in root.glob("ROIs*")):
        return "sen12ms"
    raise UserError(
        f"{root}: not a BigEarthNet v2 root (no metadata.parquet), a SEN12MS root (no ROIs* folders) nor a packed "
        "store (no store.json)"
    )


def open_source(data: str | Path = SYNTHETIC, split: str = "train", **kw: Any) -> PatchSource:
    """Open one split of a dataset.

    Args:
        data: ``"synthetic"``, a packed store or a dataset root folder.
        split: ``train``, ``validation`` (``val``) or ``test``.
        **kw: Reader options: synthetic -> ``config=SyntheticConfig`` or its fields (``seed``, ``n_train``, ...);
            BigEarthNet v2 -> ``include_snow_cloud``; SEN12MS -> ``label_threshold``, ``split_file``; a packed
            store takes none.
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
    unknown = sorted(set(kw) - set(READER_OPTIONS[kind]))
    if unknown:
        where = ("a packed store takes no reader options (they were fixed when it was packed: see its "
                 "store.json)" if kind == STORE else f"{kind} reader options are {list(READER_OPTIONS[kind])}")
        raise UserError(f"{data}: unknown options {unknown}; {where}")
    if kind == STORE:
        from mosaic_edge.data.store import PackedStore

        return PackedStore(data).open(split)
    if kind == "benv2":
        from mosaic_edge.data.benv2 import BigEarthNetV2

        return BigEarthNetV2(data, split, **kw)
    from mosaic_edge.data.sen12ms import SEN12MS

    return SEN12MS(data, split, **kw)


def contract_for(data_or_source: str | Path | PatchSource = SYNTHETIC, **kw: Any) -> Contract:
    """The contract (classes, patch size, product level, normalisation statistics) of a dataset or a source.

    BigEarthNet v2 gets the published statistics; the synthetic benchmark and SEN12MS get statistics computed
    from their own train split; a packed store carries the contract of the data it was packed from. ``kw`` are
    the :func:`open_source` options when a name/path is given.
    """
    from mosaic_edge.data.benv2 import BigEarthNetV2, benv2_contract
    from mosaic_edge.data.sen12ms import SEN12MS, sen12ms_contract
    from mosaic_edge.data.store import PackedStore, StoreSource
    from mosaic_edge.data.synthetic import SyntheticMosaic, synthetic_contract

    source = data_or_source
    if isinstance(source, (str, Path)):
        kind = detect_kind(source)
        if kind == "benv2":
            return benv2_contract()
        if kind == STORE:
            return PackedStore(source).contract()
        source = open_source(source, "train", **kw)
    if isinstance(source, SyntheticMosaic):
        return synthetic_contract(source.config)
    if isinstance(source, BigEarthNetV2):
        return benv2_contract()
    if isinstance(source, SEN12MS):
        return sen12ms_contract(source.train_source())
    if isinstance(source, StoreSource):
        return PackedStore(source.root).contract()
    raise UserError(f"no contract known for a source of type {type(source).__name__}")


def _absolute_entry(entry: str) -> str:
    """A split-file entry (``PATH`` or ``SPLIT=PATH``) with its path made absolute, so a recorded spec reopens
    from any working directory."""
    from mosaic_edge.data.sen12ms import split_file_entry

    split, path = split_file_entry(entry)
    return str(path.resolve()) if split is None else f"{split}={path.resolve()}"


def reader_options(
    data: str | Path,
    label_threshold: float | None = None,
    split_file: Sequence[str] = (),
    include_snow_cloud: bool = False,
) -> dict[str, Any]:
    """The reader options of ``data`` from the user's choices, refusing those that do not apply to it.

    SEN12MS always records its label threshold (0.1 when not given) and the split files with absolute paths, so
    a model's :class:`DataSpec` reopens the very same splits and labels.

    Raises:
        UserError: an option given for data it does not apply to (e.g. ``--split-file`` with BigEarthNet).
    """
    kind = detect_kind(data)
    given = {"label_threshold": label_threshold is not None, "split_file": bool(split_file),
             "include_snow_cloud": include_snow_cloud}
    wrong = [k for k, on in given.items() if on and k not in READER_OPTIONS.get(kind, ())]
    if wrong:
        flags = ", ".join("--" + k.replace("_", "-") for k in wrong)
        raise UserError(f"{flags} does not apply to {kind} data ({data})")
    if kind == "sen12ms":
        return {"label_threshold": 0.1 if label_threshold is None else float(label_threshold),
                "split_file": [_absolute_entry(str(e)) for e in split_file]}
    if kind == "benv2" and include_snow_cloud:
        return {"include_snow_cloud": True}
    return {}


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Where a model's patches come from: recorded in its checkpoint (``extra["data_spec"]``).

    Attributes:
        data: ``"synthetic"``, a packed store or a dataset root.
        options: Reader options of :func:`open_source`, primitives only (synthetic: the ``SyntheticConfig``
            fields; BigEarthNet v2: ``include_snow_cloud``; SEN12MS: ``label_threshold``, ``split_file`` as a
            list of split-file entries; a packed store: none).
    """

    data: str = SYNTHETIC
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)

    @property
    def kind(self) -> str:
        """``"synthetic"``, ``"store"``, ``"benv2"`` or ``"sen12ms"`` (:func:`detect_kind`; the root must exist)."""
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
