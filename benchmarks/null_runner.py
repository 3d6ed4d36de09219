"""Benchmark-only runner that does no work: the runtime's host cost with inference taken out.

:class:`NullRunner` has the :class:`~mosaic_edge.edge_runtime.runner.Runner` interface (the base class still
validates every batch against the contract) and returns fixed logits -- a few classes above threshold, so the
records have labels like real ones -- without looking at the pixels. With ``record=True`` it keeps a copy of
every batch it is given, which is how ``runtime_overhead.py`` hands the bare runner exactly the windows the
daemon would infer.
"""

from __future__ import annotations

import numpy as np

from mosaic_edge.contract import Contract
from mosaic_edge.edge_runtime.runner import Runner

EMBED = 8


class NullRunner(Runner):
    """A runner that returns constant outputs (see module docstring)."""

    kind = "null"

    def __init__(self, contract: Contract, record: bool = False):
        super().__init__(contract, "fp32", model_hash="0" * 64)
        self.record = record
        self.batches: list[dict[str, np.ndarray]] = []
        c = contract.num_classes
        self._row = np.linspace(-4.0, 2.0, c, dtype=np.float32)  # ~a third of the classes above 0.5

    def _activate(self) -> None:
        pass

    def _infer(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["sar"])
        if self.record:
            self.batches.append({k: np.array(v, copy=True) for k, v in batch.items()})
        logits = np.broadcast_to(self._row, (n, len(self._row)))
        emb = np.zeros((n, EMBED), np.float32)
        return {name: (logits if name.startswith("logits") else emb) for name in self.contract.output_names}
