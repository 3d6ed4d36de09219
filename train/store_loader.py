"""Batches out of a packed store: gathers into a ring of reusable (pinned) buffers, by threads.

A batch of a :mod:`packed store <mosaic_edge.data.store>` is one ``torch.index_select`` per array from the
memory-mapped files into a preallocated buffer: a single copy out of the page cache, with no decoding, no
per-patch Python and no allocation. ``index_select`` releases the GIL, so loader *threads* gather batches in
parallel; worker *processes* (``DataLoader``) would add a second and third copy of every batch through shared
memory, which costs more than the gather itself (``benchmarks/RESULTS.md``, "Packed store throughput").

The ring holds ``2 * workers + 2`` buffers of the largest batch. On CUDA they are pinned, the training loop copies
each batch to the device asynchronously, and a CUDA event recorded after that copy guards the buffer until it is
refilled. On the CPU a buffer is refilled only after the consumer has asked for the next batch, by which time the
standardisation (which never aliases its input) has produced the tensors it keeps.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mosaic_edge.data.store import StoreSource

Batch = dict[str, torch.Tensor]


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():  # the memory map is read-only; nothing writes through this tensor
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


@dataclass
class _Slot:
    sar: torch.Tensor
    optical: torch.Tensor  # uint16 bits as int16
    labels: torch.Tensor  # uint8
    event: Any = None  # CUDA event after the copy out of this buffer

    def wait(self) -> None:
        if self.event is not None:
            self.event.synchronize()
            self.event = None


class StoreLoader:
    """Raw batches (S1 float32 dB, S2 uint16 as int16 bits, labels uint8) of one store split.

    Args:
        source: The split.
        workers: Gathering threads (0: gather in the caller's thread, one batch at a time).
        pin: Pinned buffers (for asynchronous copies to a CUDA device).
    """

    def __init__(self, source: StoreSource, workers: int = 0, pin: bool = False):
        arrays = source.arrays()
        self._rows = torch.from_numpy(np.asarray(source.rows, dtype=np.int64))
        self._sar = _as_tensor(arrays["sar"])
        self._optical = _as_tensor(arrays["optical"].view(np.int16))
        self._labels = _as_tensor(arrays["labels"])
        self.workers, self.pin = workers, pin
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="store-loader") if workers > 0 else None
        self._slots: list[_Slot] = []

    def _ring(self, batch: int) -> list[_Slot]:
        n = 2 * self.workers + 2
        if len(self._slots) != n or self._slots[0].sar.shape[0] < batch:
            def empty(a: torch.Tensor) -> torch.Tensor:
                t = torch.empty((batch, *a.shape[1:]), dtype=a.dtype)
                return t.pin_memory() if self.pin else t

            self._slots = [_Slot(empty(self._sar), empty(self._optical), empty(self._labels)) for _ in range(n)]
        return self._slots

    def _fill(self, slot: _Slot, idx: torch.Tensor) -> tuple[_Slot, torch.Tensor]:
        slot.wait()
        n = len(idx)
        rows = self._rows[idx]
        torch.index_select(self._sar, 0, rows, out=slot.sar[:n])
        torch.index_select(self._optical, 0, rows, out=slot.optical[:n])
        torch.index_select(self._labels, 0, rows, out=slot.labels[:n])
        return slot, idx

    def batches(self, batches: list[torch.Tensor]) -> Iterator[tuple[Batch, torch.Tensor, _Slot]]:
        """Yield ``(raw views, indices, slot)``; the views stay valid until the next item is requested (CPU)
        or until ``slot.event`` (a CUDA event the consumer records after copying them) has completed."""
        if not batches:
            return
        idx = [torch.as_tensor(b, dtype=torch.long) for b in batches]
        ring = self._ring(max(len(i) for i in idx))
        depth = len(ring) - 1  # one buffer stays with the consumer
        if self._pool is None:
            for k, i in enumerate(idx):
                slot, _ = self._fill(ring[k % len(ring)], i)
                yield self._views(slot, len(i)), i, slot
            return
        pending: deque[Future[tuple[_Slot, torch.Tensor]]] = deque()
        for k in range(min(depth, len(idx))):
            pending.append(self._pool.submit(self._fill, ring[k % len(ring)], idx[k]))
        for k in range(len(idx)):
            slot, i = pending.popleft().result()
            yield self._views(slot, len(i)), i, slot
            nxt = k + depth
            if nxt < len(idx):  # refills the buffer yielded one step ago (k + depth = k - 1 modulo the ring)
                pending.append(self._pool.submit(self._fill, ring[nxt % len(ring)], idx[nxt]))

    @staticmethod
    def _views(slot: _Slot, n: int) -> Batch:
        return {"sar": slot.sar[:n], "optical": slot.optical[:n], "labels": slot.labels[:n]}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
