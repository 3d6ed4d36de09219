"""Training telemetry: a plain-stderr progress line, ``metrics.jsonl`` and ``curves.png``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


class Progress:
    """One stderr line per ``every`` steps: phase, epoch, step, loss terms and samples/s (no tqdm).

    Loss terms may be 0-d tensors on the training device: they are read (one host sync) only when printed.
    """

    def __init__(self, phase: str, epoch: int, epochs: int, steps: int, every: int, enabled: bool = True):
        self.phase, self.epoch, self.epochs, self.steps = phase, epoch, epochs, steps
        self.every, self.enabled = max(1, every), enabled
        self.t0 = time.perf_counter()
        self.samples = 0
        self.tty = sys.stderr.isatty()

    def update(self, step: int, samples: int, terms: dict[str, float]) -> None:
        self.samples += samples
        if not self.enabled or (step + 1) % self.every and step + 1 != self.steps:
            return
        rate = self.samples / max(time.perf_counter() - self.t0, 1e-9)
        loss = " ".join(f"{k} {v:.3f}" for k, v in terms.items())
        line = (
            f"[{self.phase}] epoch {self.epoch + 1}/{self.epochs} step {step + 1}/{self.steps} | {loss} | "
            f"{rate:.1f} samples/s"
        )
        end = "\n" if (not self.tty or step + 1 == self.steps) else ""
        print(("\r" if self.tty else "") + line, end=end, file=sys.stderr, flush=True)

    @property
    def throughput(self) -> float:
        return self.samples / max(time.perf_counter() - self.t0, 1e-9)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def plot_curves(records: list[dict[str, Any]], path: Path) -> Path:
    """Loss terms per pre-training epoch, the phase-2 head loss and the phase-3 fine-tune loss, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pre = [r for r in records if r.get("phase") == "pretrain"]
    head = [r for r in records if r.get("phase") == "head"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    # gnorm rides along in the per-step terms but is not a loss
    keys = sorted({k[len("loss_") :] for r in pre for k in r if k.startswith("loss_") and k != "loss_gnorm"})
    for k in keys:
        axes[0].plot([r["epoch"] + 1 for r in pre], [r.get(f"loss_{k}") for r in pre], marker="o", label=k)
    axes[0].set(title="pre-training loss terms", xlabel="epoch", ylabel="loss")
    if keys:
        axes[0].legend(fontsize=8)
    if head:
        hist = head[-1].get("history", [])
        axes[1].plot(range(1, len(hist) + 1), hist)
        title = "multi-label head BCE (frozen features)"
        if "val_macro_map" in head[-1]:
            title += f"\nval macro mAP {head[-1]['val_macro_map']:.3f}"
        axes[1].set(title=title, xlabel="head epoch", ylabel="BCE")
    ft = [r for r in records if r.get("phase") == "finetune"]
    if ft:  # phase 3 on a twin x axis: its epochs are full passes through the encoders, not head epochs
        hist = ft[-1].get("history", [])
        twin = axes[1].twiny()
        twin.plot(range(1, len(hist) + 1), hist, color="tab:red", label="fine-tune (end to end)")
        twin.set_xlabel("fine-tune epoch", color="tab:red")
        twin.legend(fontsize=8, title=f"val macro mAP {ft[-1].get('val_macro_map', float('nan')):.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
