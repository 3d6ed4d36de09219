"""The sets an export is checked on: the gate set (validation + test of the export data, topped up with
synthetic patches when the source is small) and extra labelled roots.

Why the top-up: an accuracy gate on a handful of patches means nothing (a 6-patch test split passes anything).
When the export data's validation and test splits hold fewer than
:data:`~mosaic_edge.export.gate.GATE_MIN_PATCHES` patches, synthetic benchmark patches (generated at the model's
patch size, same 19 classes) fill the difference, half to each split; the report states the composition. A
model whose classes the synthetic benchmark does not have (SEN12MS) gets no top-up and a warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mosaic_edge.contract import Contract
from mosaic_edge.data.sources import SYNTHETIC, DataSpec
from mosaic_edge.envelope import Envelope
from mosaic_edge.errors import UserError
from mosaic_edge.export import parity as par
from mosaic_edge.export.gate import GATE_MIN_PATCHES

EVAL_SPLITS = ("train", "validation", "test")
EVAL_SEED = 0


@dataclass
class EvalSets:
    """The gate set's validation and test parts (margin tuning / fallback check), the gate set, extra roots."""

    validation: par.Samples
    test: par.Samples
    gate: par.Samples
    extra: dict[str, par.Samples]

    def labelled(self) -> dict[str, par.Samples]:
        return {self.gate.name: self.gate, **self.extra}


def open_splits(spec: DataSpec, splits: tuple[str, ...], contract: Contract, everything: bool = False,
                required: bool = True) -> list[Any]:
    """The non-empty ``splits`` of ``spec``; ``everything``: an evaluation root keeps its snowy/cloudy pairs.

    Raises:
        UserError: classes unlike the model's; no samples at all when ``required``.
    """
    from mosaic_edge.data.benv2 import SNOW_CLOUD_METADATA

    kind = spec.kind  # a wrong path fails here with its own message, not as "no samples"
    extra = ({"include_snow_cloud": True}
             if everything and kind == "benv2" and (Path(spec.data) / SNOW_CLOUD_METADATA).is_file() else {})
    found = []
    for split in splits:
        try:
            src = spec.open(split, **extra)
        except UserError:
            continue  # a root without this split
        if tuple(src.classes) != tuple(contract.classes):
            raise UserError(f"{spec.data}: its {len(src.classes)} classes differ from the model's "
                            f"{contract.num_classes} (or their order does)")
        if len(src):
            found.append(src)
    if not found and required:
        raise UserError(f"{spec.data}: no samples in splits {list(splits)}")
    return found


def set_name(spec: DataSpec, split: str | None) -> str:
    return f"{spec.name}-{split}" if split else spec.name


def _part(data: DataSpec, split: str, contract: Contract, limit: int | None, fill: int,
          envelope: Envelope | None) -> par.Samples:
    """One split of the export data, plus ``fill`` synthetic patches of the same split."""
    parts = []
    srcs = open_splits(data, (split,), contract, required=False)
    if srcs:
        parts.append(par.collect_samples(f"{data.name}/{split}", srcs, contract, limit, EVAL_SEED, envelope))
    if fill > 0:
        synth = DataSpec(SYNTHETIC, {"patch_size": contract.patch_size})
        parts.append(par.collect_samples(f"synthetic/{split}", open_splits(synth, (split,), contract), contract,
                                         fill, EVAL_SEED, envelope))
    return par.concat_samples(set_name(data, split), parts)


def _synthetic_fits(contract: Contract) -> bool:
    from mosaic_edge.data.synthetic import SyntheticMosaic

    return tuple(SyntheticMosaic.classes) == tuple(contract.classes)


def evaluation_sets(data: DataSpec, contract: Contract, eval_limit: int | None, eval_data: tuple[str, ...],
                    envelope: Envelope | None, warnings: list[str]) -> EvalSets:
    """Gate set and extra labelled roots (see the module doc); ``eval_limit`` caps the gate set, half per split.

    Args:
        envelope: Record each sample's drift against it (INT8 exports).
        warnings: Appended to when the gate set stays small.
    """
    half = None if eval_limit is None else max(eval_limit // 2, 1)
    have = {s: sum(min(len(x), half or len(x)) for x in open_splits(data, (s,), contract, required=False))
            for s in ("validation", "test")}
    if not any(have.values()):
        raise UserError(f"{data.data}: no samples in its validation or test split to check the export on")
    short = max(GATE_MIN_PATCHES - sum(have.values()), 0) if data.data != SYNTHETIC else 0
    if short and not _synthetic_fits(contract):
        warnings.append(f"gate set: only {sum(have.values())} patches in {data.name}'s validation and test "
                        "splits, and the synthetic benchmark cannot top it up (other classes)")
        short = 0
    fill = {"validation": short // 2, "test": short - short // 2}
    val, test = (_part(data, s, contract, half, fill[s], envelope) for s in ("validation", "test"))
    gate = par.concat_samples(set_name(data, "validation+test"), [val, test])
    extra = {}
    for root in eval_data:
        spec = DataSpec(root)
        extra[spec.name] = par.collect_samples(spec.name, open_splits(spec, EVAL_SPLITS, contract, everything=True),
                                               contract, eval_limit, EVAL_SEED, envelope)
    return EvalSets(val, test, gate, extra)
