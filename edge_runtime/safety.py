"""The INT8 safety net at run time: the drift check of every window and the borderline fallback (DESIGN.md).

Export writes the calibration envelope (:mod:`mosaic_edge.envelope`) and, per INT8 artefact, a fallback policy
(:mod:`mosaic_edge.fallback`) into the manifest. Here the runtime uses them:

* **drift** (:mod:`mosaic_edge.edge_runtime.drift`): every window's raw values against the envelope, on the
  reader side;
* **fallback** (:class:`Reruns`): after the INT8 runner answered a batch, the windows whose answering logit for
  some class lies within the policy's margin of that class's threshold, or that are drifted, wait in a queue
  and are re-run with the higher-precision runner (fp16 TensorRT, fp32 ONNX Runtime) in batches -- up to the
  batch size, or whatever was flagged within the daemon's batching wait of the first one -- before their tile
  is committed. The re-run answers replace the INT8 ones; the record says which precision answered and why.

:class:`SafetyNet` holds what a runner's export offers (envelope, policy, the fallback runner);
:func:`open_safety_net` builds it. The daemon, ``predict`` and ``profile`` all run these functions.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mosaic_edge.edge_runtime.postprocess import HEAD_OUTPUTS, RERUN_BORDERLINE, RERUN_DRIFTED
from mosaic_edge.envelope import Envelope
from mosaic_edge.errors import UserError
from mosaic_edge.fallback import FallbackPolicy, needs_fallback

if TYPE_CHECKING:
    from mosaic_edge.edge_runtime.pipeline import Job
    from mosaic_edge.edge_runtime.runner import Runner

# Counters (also the daemon's /metrics names, each exposed with ``_total``).
COUNTS = ("windows_checked", "windows_drifted", "windows_borderline", "windows_rerun", "fallback_batches")


# ---- the net -------------------------------------------------------------------------------------------------
@dataclass
class SafetyNet:
    """What the runtime uses of an export's safety net.

    Attributes:
        envelope: Calibration envelope of the export (None: no drift check -- no INT8 in the export, a schema 1
            manifest, or a bare ONNX file).
        policy: When the fallback re-runs an INT8 window (None: no fallback).
        runner: The higher-precision runner (None: no fallback); the net owns it (:meth:`activate`).
        note: Why there is no fallback, when there is none (logged at start).
    """

    envelope: Envelope | None = None
    policy: FallbackPolicy | None = None
    runner: Runner | None = None
    note: str | None = None

    @property
    def fallback(self) -> bool:
        return self.runner is not None and self.policy is not None

    def activate(self) -> None:
        if self.runner is not None:
            self.runner.activate()

    def deactivate(self) -> None:
        if self.runner is not None:
            self.runner.deactivate()

    def __enter__(self) -> SafetyNet:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    def describe(self) -> dict[str, Any]:
        """Primitive summary for the daemon's start line and profiles."""
        env = self.envelope
        out: dict[str, Any] = {"drift_check": env is not None}
        if env is not None:
            out["drift_threshold"] = env.threshold
            out["distance_threshold"] = env.stats.threshold if env.stats is not None else None
        if self.fallback:
            assert self.runner is not None and self.policy is not None
            path = getattr(self.runner, "model_path", None)
            out["fallback"] = {"precision": self.runner.precision, "runner": self.runner.kind,
                               "artefact": Path(path).name if path else None,
                               "margin_logit": self.policy.margin_logit, "rerun_drifted": self.policy.rerun_drifted}
        else:
            out["fallback"] = None
            if self.note:
                out["fallback_note"] = self.note
        return out


def open_safety_net(model: str | Path, runner: Runner, fallback: bool = True, margin: float | None = None,
                    threads: int | None = None, **trt_options: Any) -> SafetyNet:
    """The safety net of ``runner`` (built by :func:`~mosaic_edge.edge_runtime.runner.open_runner` from
    ``model``): the export's envelope and, for an INT8 runner, its fallback (inactive until :meth:`activate`).

    Args:
        model: What ``runner`` was opened from: an export directory, or an ONNX file (listed in a manifest
            beside it, or not: then there is no safety net).
        fallback: False: drift flags only (``--no-fallback``).
        margin: Logit margin overriding the manifest's policy (and enabling the fallback of an INT8 artefact
            exported without one).
        threads / trt_options: For the fallback runner, as ``open_runner`` takes them.
    """
    from mosaic_edge.edge_runtime.runner import export_manifest, open_fallback_runner

    if margin is not None and (not np.isfinite(margin) or margin < 0):
        raise UserError(f"the fallback margin must be a logit distance >= 0, got {margin}")
    manifest = export_manifest(Path(model))
    if manifest is None:
        return SafetyNet(note="no export manifest: no calibration envelope or fallback policy")
    net = SafetyNet(envelope=manifest.envelope)
    if runner.precision != "int8":
        return net
    if not fallback:
        net.note = "turned off (--no-fallback)"
        return net
    path = getattr(runner, "model_path", None)
    name = Path(path).name if path is not None else None
    art = manifest.artefacts.get(name) if name is not None else None
    if art is not None and art.precision != "int8" and runner.kind == "trt":
        # TensorRT 8.6 builds INT8 the legacy way, from model.onnx + calib.cache: the ranges of the Q/DQ
        # artefact, so its policy
        name = manifest.artefact_for("tensorrt", "int8").name
    policy = manifest.fallback_policy(name) if name in manifest.artefacts else None
    if margin is not None:
        policy = FallbackPolicy(margin, policy.rerun_drifted if policy else True,
                                policy.target_agreement if policy else FallbackPolicy(0.0).target_agreement)
    if policy is None:
        net.note = f"{name}: the manifest has no fallback policy for it (re-export, or give a margin)"
        return net
    fb, why = open_fallback_runner(manifest, runner, threads=threads, **trt_options)
    if fb is None:
        net.note = why
        return net
    net.policy, net.runner = policy, fb
    return net


# ---- the re-run queue ----------------------------------------------------------------------------------------
def answering_logits(job: Job, rows: np.ndarray) -> np.ndarray:
    """[len(rows), C] logits of the head answering each of windows ``rows`` of ``job`` (fused, or SAR where
    the window's optical data is unusable)."""
    fused = job.logits[HEAD_OUTPUTS["fused"]][rows]
    heads = [job.heads[i] for i in rows.tolist()]
    if "sar" not in heads:
        return fused
    is_fused = np.fromiter((h == "fused" for h in heads), bool, len(heads))
    return np.where(is_fused[:, None], fused, job.logits[HEAD_OUTPUTS["sar"]][rows])


class RerunFailed(RuntimeError):
    """The fallback runner failed on a batch; ``owners`` are the tiles whose windows it held."""

    def __init__(self, owners: list[Any], cause: BaseException):
        super().__init__(f"fallback inference failed: {type(cause).__name__}: {cause}")
        self.owners = owners


@dataclass(eq=False)
class _Entry:
    owner: Any
    job: Job
    rows: np.ndarray  # window indices of the job still to re-run
    inputs: dict[str, np.ndarray]  # their model inputs (a copy: the batch buffers are reused, pieces freed)


def store_rows(job: Job, rows: np.ndarray, outputs: Mapping[str, np.ndarray], precision: str) -> None:
    """Replace the head logits of windows ``rows`` of ``job`` by the fallback runner's (of ``precision``)."""
    for name in set(HEAD_OUTPUTS.values()):
        job.logits[name][rows] = outputs[name]
    if job.answered_fallback is None:
        job.answered_fallback = np.zeros(job.n, bool)
    job.answered_fallback[rows] = True
    job.fallback_precision = precision
    job.rerun_pending -= len(rows)


class Reruns:
    """Windows waiting for the fallback runner, re-run in batches (see the module doc).

    Args:
        net: The safety net (its policy and runner; without a fallback nothing is ever queued).
        batch: Most windows per fallback batch (capped by the fallback runner's ``max_batch``).
        max_wait_s: A window waits at most this long for a fuller batch (see :meth:`deadline`).
        count: Called with ``(counter, amount)`` as windows are checked, flagged and re-run (the daemon's
            ``Metrics.inc``); the totals are also kept in :attr:`counts`.

    One thread uses it (the one running both runners); a job marked ``failed`` elsewhere is skipped.
    """

    def __init__(self, net: SafetyNet, batch: int = 8, max_wait_s: float = 0.05,
                 count: Callable[[str, int], None] | None = None):
        self.net = net
        limit = net.runner.max_batch if net.runner is not None else None
        self.batch = max(1, min(batch, limit or batch))
        self.max_wait_s = max_wait_s
        self._count = count
        self.counts: dict[str, int] = dict.fromkeys(COUNTS, 0)
        self.seconds = 0.0  # time spent in fallback batches
        self._pending: deque[_Entry] = deque()
        self.n_pending = 0
        self._first: float | None = None

    def _inc(self, name: str, amount: int) -> None:
        if amount:
            self.counts[name] += amount
            if self._count is not None:
                self._count(name, amount)

    # ---- flagging ------------------------------------------------------------------------------------------
    def flag(self, owner: Any, job: Job, rows: np.ndarray, inputs: Mapping[str, np.ndarray]) -> int:
        """Decide for windows ``rows`` of ``job`` (their INT8 outputs stored) which the fallback re-runs, and
        queue those (reasons in ``job.rerun``) with a copy of their model inputs. Counts drifted windows whether
        or not there is a fallback.

        Args:
            owner: What a failure reports (the daemon's in-flight item).
            job: The tile.
            rows: Window indices of ``job``.
            inputs: The model inputs of exactly those windows, in order (the batch's rows).

        Returns:
            How many windows were queued.
        """
        n = len(rows)
        self._inc("windows_checked", n)
        drifted = job.drift.drifted[rows] if job.drift is not None else None
        if drifted is not None:
            self._inc("windows_drifted", int(drifted.sum()))
        if not self.net.fallback:
            return 0
        assert self.net.policy is not None and self.net.runner is not None
        policy = self.net.policy
        border = needs_fallback(answering_logits(job, rows), None, self.net.runner.contract, policy)
        self._inc("windows_borderline", int(border.sum()))
        use_drift = drifted is not None and policy.rerun_drifted
        rerun = border | drifted if use_drift else border
        if not rerun.any():
            return 0
        why = border.astype(np.uint8) * RERUN_BORDERLINE
        if use_drift:
            assert drifted is not None
            why |= drifted.astype(np.uint8) * RERUN_DRIFTED
        job.reasons()[rows] = why
        picked = np.flatnonzero(rerun)
        job.rerun_pending += len(picked)
        self._pending.append(_Entry(owner, job, rows[picked], {k: v[picked] for k, v in inputs.items()}))
        self.n_pending += len(picked)
        if self._first is None:
            self._first = time.perf_counter()
        return len(picked)

    def deadline(self) -> float | None:
        """``time.perf_counter()`` by which the oldest queued window must be re-run (None: nothing queued)."""
        return None if self._first is None else self._first + self.max_wait_s

    def due(self) -> bool:
        """A full batch is queued, or the oldest window has waited long enough."""
        deadline = self.deadline()
        return self.n_pending >= self.batch or (deadline is not None and time.perf_counter() >= deadline)

    def discard(self, job: Job) -> None:
        """Drop the queued windows of ``job`` (its tile failed)."""
        kept = deque(e for e in self._pending if e.job is not job)
        self.n_pending = sum(len(e.rows) for e in kept)
        self._pending = kept
        if not kept:
            self._first = None

    # ---- running -------------------------------------------------------------------------------------------
    def _take(self) -> list[_Entry]:
        """Up to :attr:`batch` queued windows, oldest first (an entry may be split)."""
        parts, room = [], self.batch
        while self._pending and room:
            entry = self._pending[0]
            if entry.job.failed:  # failed meanwhile: nothing to answer
                self._pending.popleft()
                self.n_pending -= len(entry.rows)
            elif len(entry.rows) <= room:
                parts.append(self._pending.popleft())
                room -= len(entry.rows)
            else:
                parts.append(_Entry(entry.owner, entry.job, entry.rows[:room],
                                    {k: v[:room] for k, v in entry.inputs.items()}))
                entry.rows = entry.rows[room:]
                entry.inputs = {k: v[room:] for k, v in entry.inputs.items()}
                room = 0
        self.n_pending -= self.batch - room
        self._first = None if not self._pending else self._first
        return parts

    def run_batch(self) -> list[Any]:
        """Re-run one batch of queued windows and store the answers in their jobs; return the owners touched.

        Raises:
            RerunFailed: the fallback runner failed (the batch's windows are dropped from the queue).
        """
        parts = self._take()
        if not parts:
            return []
        runner = self.net.runner
        assert runner is not None
        owners = list(dict.fromkeys(e.owner for e in parts))
        try:
            self._run(runner, parts)
        except Exception as exc:  # noqa: BLE001 - the caller fails these tiles and carries on
            raise RerunFailed(owners, exc) from exc
        return owners

    def _run(self, runner: Runner, parts: list[_Entry]) -> None:
        t0 = time.perf_counter()
        buffers, row = runner.input_buffers(self.batch), 0
        for e in parts:
            for name, buf in buffers.items():
                buf[row:row + len(e.rows)] = e.inputs[name]
            row += len(e.rows)
        out = runner.infer({name: buf[:row] for name, buf in buffers.items()})
        dt = time.perf_counter() - t0
        self.seconds += dt
        total = sum(len(e.rows) for e in parts)
        off = 0
        for e in parts:
            k = len(e.rows)
            store_rows(e.job, e.rows, {name: v[off:off + k] for name, v in out.items()}, runner.precision)
            e.job.timings_ms["fallback"] = e.job.timings_ms.get("fallback", 0.0) + dt * 1e3 * k / total
            off += k
        self._inc("windows_rerun", total)
        self._inc("fallback_batches", 1)

    def run(self, everything: bool = False) -> Iterator[list[Any]]:
        """Re-run what is due: full batches, then (``everything``, or the oldest window has waited
        ``max_wait_s``) the rest; yields each batch's owners (a :class:`RerunFailed` may interrupt)."""
        while self.n_pending and (everything or self.due()):
            yield self.run_batch()

    def fraction(self, name: str) -> float:
        """Share of the checked windows counted under ``name`` (e.g. "windows_rerun")."""
        checked = self.counts["windows_checked"]
        return self.counts[name] / checked if checked else 0.0

    def summary(self) -> str:
        """One line: windows checked, drifted and re-run (and by which precision)."""
        c = self.counts
        text = (f"{c['windows_checked']} windows, {c['windows_drifted']} drifted "
                f"({100 * self.fraction('windows_drifted'):.1f}%)")
        if self.net.fallback:
            assert self.net.runner is not None
            text += (f", {c['windows_rerun']} re-run with {self.net.runner.precision} "
                     f"({100 * self.fraction('windows_rerun'):.1f}%; {c['windows_borderline']} borderline) "
                     f"in {c['fallback_batches']} batches")
        elif self.net.note:
            text += f"; fallback: {self.net.note}"
        return text
