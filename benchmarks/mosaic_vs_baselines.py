"""Does MoSAiC do what the paper says? Synthetic benchmark at 1 %, 10 % and 100 % labels.

Methods (same encoder, data, augmentations, epochs and evaluation; only the objective differs):

- (a) ``supervised``: BCE on the three classifiers, end to end, labelled patches only
  (``classifier=joint``, all contrastive weights 0);
- (b) ``simclr``: intra-modality NT-Xent only, then linear probe;
- (c) ``clip``: inter-modality InfoNCE only, then linear probe;
- (d) ``mosaic``: intra + inter + multi-label supervised contrast, then linear probe (the default recipe).

(b) and (c) never see labels during pre-training, so they are pre-trained once and probed at each fraction.
Metrics on the test split: macro mAP (fused head, thresholds irrelevant) and the silhouette of single-label
patches in the joint embedding space (:mod:`mosaic_edge.train.evaluate`).

    python benchmarks/mosaic_vs_baselines.py --quick           # minutes on a laptop CPU
    python benchmarks/mosaic_vs_baselines.py --out benchmarks/mosaic_vs_baselines.md
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mosaic_edge.train.checkpoint import load_checkpoint
from mosaic_edge.train.config import TrainConfig
from mosaic_edge.train.evaluate import linear_probe
from mosaic_edge.train.loop import train

FRACTIONS = (0.01, 0.1, 1.0)
METHODS = {
    "supervised": dict(l_intra=0.0, l_inter=0.0, l_sup=0.0, classifier="joint", l_bce=1.0),
    "simclr": dict(l_intra=1.0, l_inter=0.0, l_sup=0.0),
    "clip": dict(l_intra=0.0, l_inter=1.0, l_sup=0.0),
    "mosaic": dict(l_intra=1.0, l_inter=1.0, l_sup=1.0),
}
LABEL_FREE = ("simclr", "clip")


def run(base: TrainConfig, root: Path) -> list[dict]:
    rows = []
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for method, kw in METHODS.items():
        if method in LABEL_FREE:
            cfg = base.replace(**kw, out=str(root / method))
            t0 = time.perf_counter()
            train(cfg)
            pre_s = time.perf_counter() - t0
            for lf in FRACTIONS:
                model, contract = load_checkpoint(root / method / "model.pt")
                _, res = linear_probe(model.to(dev), cfg, contract, lf, dev)
                rows.append(_row(method, lf, res["test"], pre_s))
        else:
            for lf in FRACTIONS:
                cfg = base.replace(**kw, label_fraction=lf, out=str(root / f"{method}-lf{lf:g}"))
                t0 = time.perf_counter()
                res = train(cfg).metrics
                rows.append(_row(method, lf, res["test"], time.perf_counter() - t0))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _row(method: str, lf: float, test: dict, seconds: float) -> dict:
    return {
        "method": method,
        "label_fraction": lf,
        "macro_map": test["macro_map"],
        "silhouette": test["silhouette"],
        "seconds": round(seconds, 1),
    }


def table(rows: list[dict]) -> str:
    head = (
        "| method | "
        + " | ".join(f"mAP @{lf:g}" for lf in FRACTIONS)
        + " | "
        + " | ".join(f"silhouette @{lf:g}" for lf in FRACTIONS)
        + " |"
    )
    lines = [head, "|" + "---|" * (1 + 2 * len(FRACTIONS))]
    for method in METHODS:
        by = {r["label_fraction"]: r for r in rows if r["method"] == method}
        cells = [f"{by[lf]['macro_map']:.3f}" if lf in by else "" for lf in FRACTIONS]
        cells += [f"{by[lf]['silhouette']:.3f}" if lf in by else "" for lf in FRACTIONS]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small data and few epochs (tiny arch)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave)")
    ap.add_argument("--root", type=Path, default=Path("runs/benchmark"))
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # finetune_epochs=0: the linear-probe protocol compares frozen encoders; the default training's end-to-end
    # fine-tune would train every method's encoder with labels and blur what the pre-training objective did.
    base = TrainConfig(seed=args.seed, log_every=1000, finetune_epochs=0)
    if args.quick:
        base = base.replace(
            arch="tiny",
            n_train=400,
            n_val=200,
            n_test=200,
            patch_size=24,
            crop_size=16,
            batch_size=64,
            epochs=4,
            head_epochs=100,
        )
    if args.epochs is not None:
        base = base.replace(epochs=args.epochs)
    t0 = time.perf_counter()
    rows = run(base, args.root)
    md = table(rows)
    cmd = (
        "python benchmarks/mosaic_vs_baselines.py"
        + (" --quick" if args.quick else "")
        + (f" --epochs {args.epochs}" if args.epochs is not None else "")
        + (f" --threads {args.threads}" if args.threads else "")
    )
    text = (
        f"{md}\n\nTest split of the synthetic benchmark; macro mAP of the fused head; silhouette of "
        f"single-label patches (cosine, joint embedding). Config: arch={base.arch}, n_train={base.n_train}, "
        f"patch={base.patch_size}, epochs={base.epochs}, seed={base.seed}; "
        f"{time.perf_counter() - t0:.0f} s.\n"
        f"Command: `{cmd}`\n"
    )
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
