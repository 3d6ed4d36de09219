"""Weights-only checkpoints that carry the contract.

A checkpoint is ``torch.save`` of a dict holding only tensors and primitives, so ``torch.load(path,
weights_only=True)`` opens it (STYLE.md #11)::

    {"format": "mosaic-edge-checkpoint", "schema": 1, "model_config": {...build_model kwargs...},
     "state_dict": {...}, "contract": "<Contract JSON>", "extra": {...primitives...}}

The contract's ``model_hash`` is the SHA-256 of the state dict (:func:`state_dict_hash`), so an export can be
traced back to the weights it came from.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from mosaic_edge.contract import Contract
from mosaic_edge.errors import DataError
from mosaic_edge.train.models import MosaicModel, build_model

FORMAT = "mosaic-edge-checkpoint"
SCHEMA = 1


def state_dict_hash(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of a state dict, in sorted key order."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_checkpoint(
    path: str | Path, model: MosaicModel, contract: Contract, extra: dict[str, Any] | None = None
) -> Contract:
    """Write ``model`` and ``contract`` to ``path`` atomically; return the contract with ``model_hash`` set.

    Args:
        path: Destination ``.pt`` file.
        model: The (unwrapped, not DDP) model.
        contract: Its contract; ``model_name`` is set from ``model.config["arch"]`` when empty.
        extra: JSON-like primitives to keep alongside (training config, metrics).
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    contract = contract.replace(
        model_hash=state_dict_hash(state), model_name=contract.model_name or str(model.config["arch"])
    )
    blob = {
        "format": FORMAT,
        "schema": SCHEMA,
        "model_config": dict(model.config),
        "state_dict": state,
        "contract": contract.to_json(),
        "extra": dict(extra or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a truncated checkpoint behind
    return contract


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict, loaded with ``weights_only=True``; DataError when it is not one of ours."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a checkpoint we can trust"
        raise DataError(f"{path} is not a loadable weights-only checkpoint: {exc}") from exc
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise DataError(f"{path} is not a mosaic-edge checkpoint")
    if int(blob.get("schema", 0)) > SCHEMA:
        raise DataError(f"{path} has checkpoint schema {blob['schema']}, newer than {SCHEMA}")
    return blob


def load_checkpoint(path: str | Path) -> tuple[MosaicModel, Contract]:
    """Rebuild the model from a checkpoint; return ``(model.eval(), contract)``."""
    blob = read_checkpoint(path)
    model = build_model(**blob["model_config"])
    model.load_state_dict(blob["state_dict"])
    return model.eval(), Contract.from_json(blob["contract"])
