"""How many labelled patches per batch? ``--min-labelled`` swept at low label fractions (default training).

For each label fraction, ``min_labelled`` k and seed, runs ``mosaic-edge train`` with all other defaults
(synthetic benchmark, resnet10_micro, 12 pre-training epochs, linear heads, 30 fine-tune epochs) and records the
validation and test macro mAP of the frozen encoders (linear probe, phase 2) and of the final model (after the
fine-tune), plus how many labelled patches the pre-training batches held. The default k is the one with the best
mean *validation* macro mAP of the final model.

    python benchmarks/low_label_sampler.py --out benchmarks/results/low_label_sampler.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from mosaic_edge.data.base import labelled_mask
from mosaic_edge.train.config import TrainConfig
from mosaic_edge.train.loop import train
from mosaic_edge.train.sampling import labelled_epoch_batches


def labelled_counts(cfg: TrainConfig) -> np.ndarray:
    """Labelled patches per pre-training batch over all epochs of ``cfg``."""
    mask = labelled_mask(cfg.n_train, cfg.label_fraction, cfg.seed)
    return np.asarray([int(mask[b.numpy()].sum()) for e in range(cfg.epochs)
                       for b in labelled_epoch_batches(mask, cfg.batch_size, cfg.min_labelled, cfg.seed, e)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1])
    ap.add_argument("--k", type=int, nargs="+", default=[0, 4, 16, 32])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--root", type=Path, default=Path("runs/low-label"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = json.loads(args.out.read_text()) if args.out and args.out.is_file() else []
    done = {(r["label_fraction"], r["min_labelled"], r["seed"]) for r in rows}
    for lf in args.fractions:
        for seed in args.seeds:
            for k in args.k:
                if (lf, k, seed) in done:
                    continue
                cfg = TrainConfig(label_fraction=lf, min_labelled=k, seed=seed, log_every=1000,
                                  out=str(args.root / f"lf{lf:g}-k{k}-s{seed}"))
                t0 = time.perf_counter()
                res = train(cfg)
                records = [json.loads(x) for x in (cfg.out_dir / "metrics.jsonl").read_text().splitlines()]
                head = next(r for r in records if r["phase"] == "head")
                ft = next((r for r in records if r["phase"] == "finetune"), {})
                counts = labelled_counts(cfg)
                rows.append({
                    "label_fraction": lf, "min_labelled": k, "seed": seed,
                    "probe_val_macro_map": head["val_macro_map"],
                    "probe_test_macro_map": ft.get("probe_test_macro_map"),
                    "val_macro_map": res.metrics["val"]["macro_map"],
                    "test_macro_map": res.metrics["test"]["macro_map"],
                    "test_silhouette_features": res.metrics["test"]["silhouette_features"],
                    "labelled_per_batch": [int(counts.min()), float(counts.mean()), int(counts.max())],
                    "batches_below_2_labelled": float((counts < 2).mean()),
                    "wall_s": round(time.perf_counter() - t0, 1),
                })
                print(json.dumps(rows[-1]), flush=True)
                if args.out:
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
