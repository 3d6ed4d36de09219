"""Does MoSAiC do what the paper says? Synthetic benchmark at 1 %, 10 % and 100 % labels, several seeds.

Methods (same encoder, data, schedule and evaluation; only the phase-1 objective differs):

- ``supervised``: BCE on the three classifiers, end to end, labelled patches only, one geometric view per step
  (flips / 90-degree rotations: the contrastive crops and photometric noise serve contrastive views, not a
  classifier);
- ``simclr``: intra-modality NT-Xent only;
- ``clip``: inter-modality InfoNCE only;
- ``mosaic``: intra + inter + multi-label supervised contrast at the default weights (the default recipe);
- ``mosaic-lsup4``: the same with the SupCon weight 4 (``benchmarks/RESULTS.md``, "SupCon term during
  pre-training").

Every method gets the same budget: phase 1 = ``epochs`` epochs of its objective (``n_train // batch`` steps each;
the supervised baseline cycles through its labelled patches to fill them), then two evaluations of that encoder
at each label fraction:

- ``probe``: frozen encoder + linear heads (phase 2), the linear-probe protocol;
- ``fine-tuned``: the same, then ``finetune_epochs`` epochs of end-to-end BCE on the labelled patches (phase 3,
  the default training's last phase) -- equal-budget fine-tuning for every method.

``simclr`` and ``clip`` use no labels in phase 1, so one phase 1 per seed serves every fraction. Metrics on the
test split: macro mAP (fused head) and the silhouette of single-label patches on the *encoder features*
(``silhouette_features``: the representation every method has, unlike projection heads that a supervised model
never trains and phase 3 leaves stale). Rows are appended to ``--json`` as they finish, so an interrupted run
resumes; ``--seeds`` runs one seed after another.

    python benchmarks/mosaic_vs_baselines.py --quick --seeds 0        # minutes
    nice -n 5 python benchmarks/mosaic_vs_baselines.py --seeds 0 1 2 --json benchmarks/results/baselines.json
    python benchmarks/mosaic_vs_baselines.py --table --json benchmarks/results/baselines.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from mosaic_edge.train.checkpoint import load_checkpoint
from mosaic_edge.train.config import TrainConfig
from mosaic_edge.train.data import load_split
from mosaic_edge.train.evaluate import linear_probe, load_eval_splits, tune_and_test
from mosaic_edge.train.finetune import finetune
from mosaic_edge.train.loop import amp_dtype, memory_format, train

FRACTIONS = (0.01, 0.1, 1.0)
METHODS: dict[str, dict[str, Any]] = {
    "supervised": dict(l_intra=0.0, l_inter=0.0, l_sup=0.0, classifier="joint", l_bce=1.0),
    "simclr": dict(l_intra=1.0, l_inter=0.0, l_sup=0.0),
    "clip": dict(l_intra=0.0, l_inter=1.0, l_sup=0.0),
    "mosaic": {},  # the default objective: intra + inter + multi-label SupCon at the default weights
    "mosaic-lsup4": dict(l_sup=4.0),  # the same with the SupCon weight that balances it at full labels
}
LABEL_FREE = ("simclr", "clip")


def evaluate_encoder(cfg: TrainConfig, checkpoint: Path, lf: float, dev: torch.device,
                     eval_splits: dict[str, Any]) -> dict[str, Any]:
    """Probe, then fine-tune, the phase-1 encoder of ``checkpoint`` at label fraction ``lf``."""
    model, contract = load_checkpoint(checkpoint)
    model.to(dev)
    split = load_split(cfg, contract, "train", lf)
    t0 = time.perf_counter()
    contract, probe = linear_probe(model, cfg, contract, lf, dev, split, eval_splits)
    t1 = time.perf_counter()
    finetune(model, split, contract, cfg.finetune_epochs, cfg.finetune_lr, cfg.seed, dev,
             weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip,  # as `train`'s phase 3 runs it
             amp_dtype=amp_dtype(cfg, dev), memory_format=memory_format(cfg, dev))
    _, ft = tune_and_test(model, cfg, contract, dev, eval_splits)
    return {
        "probe_macro_map": probe["test"]["macro_map"],
        "probe_silhouette_features": probe["test"]["silhouette_features"],
        "finetuned_macro_map": ft["test"]["macro_map"],
        "finetuned_silhouette_features": ft["test"]["silhouette_features"],
        "probe_val_macro_map": probe["val"]["macro_map"],
        "finetuned_val_macro_map": ft["val"]["macro_map"],
        "probe_s": round(t1 - t0, 1),
        "finetune_s": round(time.perf_counter() - t1, 1),
    }


def run_seed(base: TrainConfig, root: Path, seed: int, out: Path | None, done: set[tuple[Any, ...]]) -> list[dict]:
    rows = []
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base = base.replace(seed=seed)
    eval_splits = None
    for method, kw in METHODS.items():
        pre: dict[float, tuple[Path, float]] = {}
        for lf in FRACTIONS:
            if (seed, method, lf) in done:
                continue
            key = 1.0 if method in LABEL_FREE else lf
            if key not in pre:
                cfg = base.replace(**kw, label_fraction=key, finetune_epochs=0,
                                   out=str(root / f"s{seed}" / f"{method}-lf{key:g}"))
                t0 = time.perf_counter()
                train(cfg)
                pre[key] = (cfg.out_dir / "model.pt", time.perf_counter() - t0)
            cfg = base.replace(**kw, label_fraction=lf)
            if eval_splits is None:
                _, contract = load_checkpoint(pre[key][0])
                eval_splits = load_eval_splits(cfg, contract)
            res = evaluate_encoder(cfg, pre[key][0], lf, dev, eval_splits)
            row = {"seed": seed, "method": method, "label_fraction": lf, **res, "phase1_s": round(pre[key][1], 1),
                   "load_average": [round(x, 2) for x in os.getloadavg()]}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if out:
                with open(out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    return rows


def _cell(values: list[float]) -> str:
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(rows: list[dict]) -> str:
    """Markdown: one line per method and protocol, mean ± std over seeds (sample std)."""
    seeds = sorted({r["seed"] for r in rows})
    head = ("| method | protocol | " + " | ".join(f"mAP @{lf:g}" for lf in FRACTIONS) + " | "
            + " | ".join(f"silhouette @{lf:g}" for lf in FRACTIONS) + " |")
    lines = [f"Test split, {len(seeds)} seed(s) {seeds}; mean ± std over seeds.", "", head,
             "|" + "---|" * (2 + 2 * len(FRACTIONS))]
    for method in METHODS:
        for proto in ("probe", "finetuned"):
            by = {lf: [r for r in rows if r["method"] == method and r["label_fraction"] == lf] for lf in FRACTIONS}
            cells = [_cell([r[f"{proto}_macro_map"] for r in by[lf]]) for lf in FRACTIONS]
            cells += [_cell([r[f"{proto}_silhouette_features"] for r in by[lf]]) for lf in FRACTIONS]
            label = "linear probe" if proto == "probe" else "fine-tuned"
            lines.append(f"| {method} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small data and few epochs (tiny arch)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave)")
    ap.add_argument("--root", type=Path, default=Path("runs/benchmark"))
    ap.add_argument("--json", type=Path, default=None, help="rows, one JSON per line (appended; resumes)")
    ap.add_argument("--table", action="store_true", help="only print the table of the rows in --json")
    args = ap.parse_args()
    rows = [json.loads(x) for x in args.json.read_text().splitlines()] if args.json and args.json.is_file() else []
    if args.table:
        print(table(rows))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    base = TrainConfig(log_every=1000)
    if args.quick:
        base = base.replace(arch="tiny", n_train=400, n_val=200, n_test=200, patch_size=24, crop_size=16,
                            batch_size=64, epochs=4, head_epochs=100, finetune_epochs=5)
    if args.epochs is not None:
        base = base.replace(epochs=args.epochs)
    done = {(r["seed"], r["method"], r["label_fraction"]) for r in rows}
    t0 = time.perf_counter()
    for seed in args.seeds:
        rows += run_seed(base, args.root, seed, args.json, done)
    print(table(rows))
    print(f"\nConfig: arch={base.arch}, n_train={base.n_train}, patch={base.patch_size}, epochs={base.epochs}, "
          f"finetune_epochs={base.finetune_epochs}; {time.perf_counter() - t0:.0f} s this invocation.")


if __name__ == "__main__":
    main()
