"""The I/O contract: the single source of truth shared by training, export and the runtime.

A :class:`Contract` names the model inputs (``sar`` [N,2,H,W], ``optical`` [N,12,H,W], float32, standardised or
in raw physical units standardised inside the graph: :attr:`Contract.input_form`), the band order, the per-band
normalisation statistics and where they come from, the class names in order, per-class decision thresholds, the
patch size and the model version/hash. Training writes it into the checkpoint, export copies it into ONNX
``metadata_props`` and ``manifest.json``, and the runtime refuses artefacts whose contract does not match the tiles
it is given (:meth:`Contract.check_compatible`, :meth:`Contract.validate_batch`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mosaic_edge.errors import ContractMismatchError
from mosaic_edge.version import __version__

SCHEMA_VERSION = 1

# Sentinel-1 GRD polarisations, in the order of the model's ``sar`` input channels.
S1_BANDS: tuple[str, ...] = ("VV", "VH")
# Sentinel-2 L2A bands used by BigEarthNet v2 (B10 is dropped: it is a cirrus band absent from L2A), in the order of
# the ``optical`` input channels. Source: BigEarthNet v2.0 (reBEN, Clasen et al. 2024, arXiv 2407.03653).
S2_BANDS: tuple[str, ...] = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
# Native ground sampling distance in metres of each S2 band; 20 m and 60 m bands are upsampled to the 10 m grid.
S2_GSD: dict[str, int] = {
    "B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20,
    "B08": 10, "B8A": 20, "B09": 60, "B11": 20, "B12": 20,
}

# The 19-class nomenclature of BigEarthNet (Sumbul et al. 2021), official order.
BENV2_CLASSES: tuple[str, ...] = (
    "Urban fabric",
    "Industrial or commercial units",
    "Arable land",
    "Permanent crops",
    "Pastures",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland and sparsely vegetated areas",
    "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland, shrub",
    "Beaches, dunes, sands",
    "Inland wetlands",
    "Coastal wetlands",
    "Inland waters",
    "Marine waters",
)

# Published per-band mean / std in raw units (S2: L2A reflectance x 1e4; S1: backscatter in dB), as ConfigILM's
# BigEarthNet v2 utilities publish them (lhackel-tub/ConfigILM, configilm/extra/BENv2_utils.py, ``means`` / ``stds``
# under "120_bilinear"; the configilm 0.7.1 package). S2: the BigEarthNet v2.0 (reBEN, arXiv 2407.03653) official
# train split, the 20 m and 60 m bands upsampled to 120 px by ``torch.nn.functional.interpolate(mode="bilinear",
# align_corners=True)`` (that file's ``stack_and_interpolate``) -- not the half-pixel resampling of
# :mod:`mosaic_edge.data.preprocess`; README "Normalisation statistics" measures the difference. S1 (VV, VH): the
# statistics of BigEarthNet v1 (BigEarthNet-S1 v1.0), which that file reuses for v2 ("including S1 stats from v1").
BENV2_STATS: dict[str, tuple[float, float]] = {
    "B01": (360.6468, 563.1734), "B02": (438.3721, 607.0269), "B03": (614.0557, 603.2968),
    "B04": (588.4096, 684.5688), "B05": (942.7477, 727.5784), "B06": (1769.8486, 1087.4288),
    "B07": (2049.4758, 1261.4303), "B08": (2193.2920, 1369.3717), "B8A": (2235.4868, 1342.4905),
    "B09": (2241.1060, 1294.3555), "B11": (1568.2115, 1063.9198), "B12": (997.7151, 806.8846),
    "VH": (-19.3526, 5.5905), "VV": (-12.6439, 5.1335),
}
BENV2_STATS_SOURCE = ("BigEarthNet v2.0 official train split for S2 (20/60 m bands bilinearly upsampled with "
                      "align_corners=True), BigEarthNet v1 for S1; published by ConfigILM (BENv2_utils, "
                      "120_bilinear)")

# Processing level of the S2 reflectance: Level-2A (bottom of atmosphere, BigEarthNet v2) or Level-1C (top of
# atmosphere, SEN12MS). The two differ by the atmospheric correction, so a model never mixes them.
OPTICAL_PRODUCTS: tuple[str, ...] = ("L2A", "L1C")

# S1 backscatter is clipped to this range in dB before standardisation: real GRD backscatter lies well inside it
# (noise floor about -25 dB for VH, bright urban targets about +5 dB); values outside are border/no-data artefacts.
SAR_DB_RANGE: tuple[float, float] = (-50.0, 10.0)
# S2 L2A reflectance x 1e4 is clipped to this range; 0 is the L2A no-data value and bright clouds stay below 15000.
OPTICAL_RANGE: tuple[float, float] = (0.0, 15000.0)

# Key of the contract JSON in an ONNX model's ``metadata_props`` (written by export, read by the runtime).
METADATA_KEY = "mosaic_edge.contract"

INPUT_NAMES: tuple[str, ...] = ("sar", "optical")
# What the model's inputs hold. "standardised": clipped and standardised with the contract's statistics
# (mosaic_edge.data.preprocess), non-finite and L2A no-data pixels at 0. "raw": physical units -- S1 in dB, S2
# reflectance x 1e4, both float32, non-finite pixels already replaced by the band mean -- and the graph's
# prologue does the clipping, standardisation and no-data masking (mosaic_edge.export.raw_inputs).
INPUT_FORMS: tuple[str, ...] = ("standardised", "raw")
# Fused logits, per-modality logits (the SAR head answers when optical is missing/cloudy), and both embeddings.
OUTPUT_NAMES: tuple[str, ...] = ("logits", "logits_sar", "logits_optical", "emb_sar", "emb_optical")


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function in float64 (no overflow for logits of any size)."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def decide(logits: np.ndarray, thresholds: Any) -> np.ndarray:
    """The label rule of every stage: class ``c`` is present when ``sigmoid(logit_c) >= thresholds[c]``.

    Args:
        logits: ``[..., C]`` raw logits.
        thresholds: ``C`` per-class thresholds on the probability.

    Returns:
        Boolean ``[..., C]``.
    """
    return sigmoid(logits) >= np.asarray(thresholds, dtype=np.float64)


def _floats(values: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class Contract:
    """What a model consumes and produces; serialised to JSON next to every artefact.

    Attributes:
        classes: Class names in logit order.
        thresholds: Per-class decision threshold on the sigmoid probability.
        patch_size: Height and width of one model input patch in pixels (10 m grid).
        sar_bands / optical_bands: Channel order of the ``sar`` and ``optical`` inputs.
        sar_mean / sar_std / optical_mean / optical_std: Per-band standardisation statistics in raw units.
        stats_source: Where the statistics come from.
        sar_db_range / optical_range: Clip ranges applied before standardisation.
        optical_product: Processing level of the S2 input, ``"L2A"`` or ``"L1C"`` (:data:`OPTICAL_PRODUCTS`).
        dataset: Name of the data the model was trained on.
        model_name: Architecture identifier (encoder registry names).
        model_hash: SHA-256 of the weights ("" until training writes it).
        version: mosaic-edge version that wrote the contract.
        input_form: What the inputs hold, one of :data:`INPUT_FORMS` (training and checkpoints:
            "standardised"; export writes "raw" artefacts by default).
    """

    classes: tuple[str, ...] = BENV2_CLASSES
    thresholds: tuple[float, ...] = (0.5,) * len(BENV2_CLASSES)
    patch_size: int = 120
    sar_bands: tuple[str, ...] = S1_BANDS
    optical_bands: tuple[str, ...] = S2_BANDS
    sar_mean: tuple[float, ...] = tuple(BENV2_STATS[b][0] for b in S1_BANDS)
    sar_std: tuple[float, ...] = tuple(BENV2_STATS[b][1] for b in S1_BANDS)
    optical_mean: tuple[float, ...] = tuple(BENV2_STATS[b][0] for b in S2_BANDS)
    optical_std: tuple[float, ...] = tuple(BENV2_STATS[b][1] for b in S2_BANDS)
    stats_source: str = BENV2_STATS_SOURCE
    sar_db_range: tuple[float, float] = SAR_DB_RANGE
    optical_range: tuple[float, float] = OPTICAL_RANGE
    optical_product: str = "L2A"
    dataset: str = "benv2"
    model_name: str = ""
    model_hash: str = ""
    version: str = __version__
    input_names: tuple[str, ...] = INPUT_NAMES
    output_names: tuple[str, ...] = OUTPUT_NAMES
    schema: int = field(default=SCHEMA_VERSION)
    input_form: str = "standardised"

    def __post_init__(self) -> None:
        n = len(self.classes)
        if n == 0:
            raise ValueError("contract: no classes")
        if len(self.thresholds) != n:
            raise ValueError(f"contract: {len(self.thresholds)} thresholds for {n} classes")
        if any(not 0.0 < t < 1.0 for t in self.thresholds):
            raise ValueError("contract: thresholds must lie strictly between 0 and 1")
        for name, bands, mean, std in (
            ("sar", self.sar_bands, self.sar_mean, self.sar_std),
            ("optical", self.optical_bands, self.optical_mean, self.optical_std),
        ):
            if not (len(bands) == len(mean) == len(std)):
                raise ValueError(f"contract: {name} has {len(bands)} bands, {len(mean)} means, {len(std)} stds")
            if any(s <= 0 for s in std):
                raise ValueError(f"contract: {name} std must be > 0")
        if self.patch_size <= 0:
            raise ValueError("contract: patch_size must be > 0")
        if self.optical_product not in OPTICAL_PRODUCTS:
            raise ValueError(f"contract: optical_product must be one of {OPTICAL_PRODUCTS}, got "
                             f"{self.optical_product!r}")
        if self.input_form not in INPUT_FORMS:
            raise ValueError(f"contract: input_form must be one of {INPUT_FORMS}, got {self.input_form!r}")

    # ---- shapes -------------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def input_shapes(self, batch: int | str = "N") -> dict[str, tuple[int | str, ...]]:
        """Input name -> shape ``(batch, channels, H, W)``."""
        p = self.patch_size
        return {"sar": (batch, len(self.sar_bands), p, p), "optical": (batch, len(self.optical_bands), p, p)}

    def input_dtype(self, name: str) -> str:
        """The dtype of input ``name``: float32 in both forms (TensorRT has no uint16 input type, and numpy's
        uint16 -> float32 cast is cheap where uint16 -> float16 is not)."""
        if name not in self.input_names:
            raise KeyError(name)
        return "float32"

    def decide(self, logits: np.ndarray) -> np.ndarray:
        """Boolean ``[N, C]`` decisions of ``logits`` at this contract's thresholds (:func:`decide`)."""
        return decide(logits, self.thresholds)

    def validate_batch(self, batch: Mapping[str, np.ndarray]) -> int:
        """Check names, dtypes and shapes of a model input batch; return the batch size.

        Raises:
            ContractMismatchError: naming every input that differs and how.
        """
        problems = []
        missing = [n for n in self.input_names if n not in batch]
        extra = [n for n in batch if n not in self.input_names]
        if missing:
            problems.append(f"missing inputs {missing}")
        if extra:
            problems.append(f"unexpected inputs {extra}")
        if missing or extra:
            problems.append(f"has arrays {sorted(batch)}, the contract's inputs are {sorted(self.input_names)}")
        sizes = set()
        for name, want in self.input_shapes().items():
            if name not in batch:
                continue
            arr = batch[name]
            if str(arr.dtype) != self.input_dtype(name):
                problems.append(f"{name} dtype {arr.dtype}, contract says {self.input_dtype(name)} "
                                f"({self.input_form} inputs)")
            if arr.ndim != 4 or tuple(arr.shape[1:]) != want[1:]:
                problems.append(f"{name} shape {tuple(arr.shape)}, contract says {want}")
            elif arr.shape[0] < 1:
                problems.append(f"{name} has an empty batch")
            sizes.add(arr.shape[0] if arr.ndim else -1)
        if len(sizes) > 1:
            problems.append(f"inputs disagree on batch size {sorted(sizes)}")
        if problems:
            raise ContractMismatchError("batch does not match the contract: " + "; ".join(problems))
        return int(next(iter(sizes)))

    # ---- comparison ---------------------------------------------------------------------------------------
    # Fields that define what the model expects; thresholds, hash and version may differ between compatible
    # artefacts of one model (e.g. re-tuned thresholds) and are compared by :meth:`diff` only on request.
    _INTERFACE_FIELDS = (
        "classes", "patch_size", "sar_bands", "optical_bands", "sar_mean", "sar_std", "optical_mean",
        "optical_std", "sar_db_range", "optical_range", "optical_product", "input_names", "output_names",
        "input_form",
    )

    def diff(self, other: Contract, fields: tuple[str, ...] | None = None) -> list[str]:
        """Human-readable differences between two contracts (empty when they agree)."""
        out = []
        for name in fields or self._INTERFACE_FIELDS:
            a, b = getattr(self, name), getattr(other, name)
            if a != b and name == "input_form":
                out.append(f"input form: {a} inputs expected, the other takes {b} inputs")
            elif a != b:
                if isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b):
                    idx = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
                    out.append(f"{name} differs at positions {idx[:5]}: {[a[i] for i in idx[:3]]} vs "
                               f"{[b[i] for i in idx[:3]]}")
                else:
                    out.append(f"{name}: {a!r} vs {b!r}")
        return out

    def check_optical_product(self, level: str | None, what: str = "tile") -> None:
        """Refuse optical data of another processing level (a tile that declares ``"L1C"`` for an L2A model).

        ``None`` (the data does not say) passes; the caller decides whether undeclared data is acceptable.
        """
        if level is not None and level != self.optical_product:
            raise ContractMismatchError(f"{what}: optical data is Sentinel-2 {level}, the model takes "
                                        f"{self.optical_product}")

    def check_compatible(self, other: Contract, what: str = "artefact") -> None:
        """Raise :class:`ContractMismatchError` saying what differs when ``other`` is not interchangeable."""
        problems = self.diff(other)
        if problems:
            raise ContractMismatchError(f"{what} contract does not match: " + "; ".join(problems))

    # ---- serialisation ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Contract:
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ContractMismatchError(f"contract has unknown fields {unknown} (written by a newer mosaic-edge?)")
        if int(data.get("schema", SCHEMA_VERSION)) > SCHEMA_VERSION:
            raise ContractMismatchError(f"contract schema {data['schema']} is newer than {SCHEMA_VERSION}")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if isinstance(value, list):
                value = tuple(value)
                if key in ("thresholds", "sar_mean", "sar_std", "optical_mean", "optical_std",
                           "sar_db_range", "optical_range"):
                    value = _floats(value)
            kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> Contract:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ContractMismatchError(f"contract is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ContractMismatchError("contract JSON is not an object")
        return cls.from_dict(data)

    def to_metadata(self) -> dict[str, str]:
        """The ``metadata_props`` entry carrying this contract in an ONNX model (compact JSON)."""
        return {METADATA_KEY: self.to_json(indent=None)}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str], what: str = "model") -> Contract | None:
        """The contract stored in an ONNX model's metadata, None when there is none.

        Raises:
            ContractMismatchError: the entry exists but is not a usable contract.
        """
        text = metadata.get(METADATA_KEY)
        if text is None:
            return None
        try:
            return cls.from_json(text)
        except (ContractMismatchError, TypeError, ValueError) as exc:
            raise ContractMismatchError(f"{what}: contract in ONNX metadata is unusable: {exc}") from exc

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Contract:
        return cls.from_json(Path(path).read_text())

    def replace(self, **changes: Any) -> Contract:
        return dataclasses.replace(self, **changes)

    def fingerprint(self) -> str:
        """Short SHA-256 of the interface fields, for cache keys and logs."""
        blob = json.dumps({k: self.to_dict()[k] for k in self._INTERFACE_FIELDS}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
