"""Batches out of a packed store: row copies into a ring of reusable (pinned) buffers, by threads.

A batch of a :mod:`packed store <mosaic_edge.data.store>` is, per array, one contiguous copy per patch from the
memory-mapped file into a preallocated buffer: a single copy out of the page cache, in file order, with no
decoding, no allocation and no per-pixel Python. numpy releases the GIL for these copies and runs them on the
calling thread only, so loader *threads* gather batches in parallel without oversubscribing the cores; worker
*processes* (``DataLoader``) would add a second and a third copy of every batch through shared memory, which costs
more than the gather itself (``benchmarks/RESULTS.md``, "Packed store throughput").

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
        self._rows = np.asarray(source.rows, dtype=np.int64)
        self._arrays = (arrays["sar"], arrays["optical"].view(np.int16), arrays["labels"])
        self.workers, self.pin = workers, pin
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="store-loader") if workers > 0 else None
        self._slots: list[_Slot] = []

    def _ring(self, batch: int) -> list[_Slot]:
        n = 2 * self.workers + 2
        if len(self._slots) != n or self._slots[0].sar.shape[0] < batch:
            def empty(a: np.ndarray) -> torch.Tensor:
                t = torch.empty((batch, *a.shape[1:]), dtype=_as_tensor(a[:0]).dtype)
                return t.pin_memory() if self.pin else t

            self._slots = [_Slot(*(empty(a) for a in self._arrays)) for _ in range(n)]
        return self._slots

    def _fill(self, slot: _Slot, idx: torch.Tensor) -> tuple[_Slot, torch.Tensor]:
        slot.wait()
        rows = self._rows[idx.numpy()]
        outs = (slot.sar.numpy(), slot.optical.numpy(), slot.labels.numpy())
        for j in np.argsort(rows, kind="stable"):  # file order: sequential reads when the pages are not cached
            r = rows[j]
            for out, array in zip(outs, self._arrays, strict=True):
                out[j] = array[r]
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
