"""Why does the multi-label SupCon term rise during the default pre-training while the other terms fall?

Runs phase 1 of ``mosaic-edge train`` (synthetic default, linear probe only: ``finetune_epochs=0``) under
variants of the objective, then, for every resulting model, measures on the same fixed validation batches (eval
mode, two augmented views drawn with one seed) every term of the objective -- also the ones that variant did
not optimise -- and the label-only floor of the SupCon term:

    floor = mean over anchors i of H(w_i / sum_j w_ij)

the smallest value ``-sum_j w_ij log p_ij / sum_j w_ij`` can take for any embedding (reached when p_ij is
proportional to the Jaccard weights w_ij), while ``log(4M - 1)`` is its value when the embedding is
uninformative (all similarities equal). It also reports each variant's linear-probe macro mAP (validation and
test) and the silhouette on encoder features.

    python benchmarks/supcon_analysis.py --out benchmarks/results/supcon_analysis.json
    python benchmarks/supcon_analysis.py --seed 1 --only "default (intra 1, inter 1, sup 1, tau 0.1)" \
        "sup weight 2" "sup weight 4" --out benchmarks/results/supcon_analysis.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from mosaic_edge.train.augment import AugmentConfig, augment_pair
from mosaic_edge.train.checkpoint import load_checkpoint
from mosaic_edge.train.config import TrainConfig
from mosaic_edge.train.data import load_split
from mosaic_edge.train.loop import train
from mosaic_edge.train.loss_infonce import symmetric_infonce
from mosaic_edge.train.loss_mlsupcon import jaccard_matrix, multilabel_supcon
from mosaic_edge.train.loss_ntxent import nt_xent
from mosaic_edge.train.sampling import epoch_batches

VARIANTS: dict[str, dict[str, Any]] = {
    "default (intra 1, inter 1, sup 1, tau 0.1)": {},
    "sup only": dict(l_intra=0.0, l_inter=0.0),
    "no intra (inter 1, sup 1)": dict(l_intra=0.0),
    "no inter (intra 1, sup 1)": dict(l_inter=0.0),
    "self-supervised only (sup 0)": dict(l_sup=0.0),
    "sup weight 2": dict(l_sup=2.0),
    "sup weight 4": dict(l_sup=4.0),
    "tau 0.2": dict(temperature=0.2),
}


def supcon_floor(y: torch.Tensor, views: int = 4) -> float:
    """Smallest achievable multi-label SupCon of a batch with labels ``y`` [M, C] stacked ``views`` times."""
    yy = y.repeat(views, 1)
    k = yy.shape[0]
    w = jaccard_matrix(yy).masked_fill(torch.eye(k, dtype=torch.bool), 0.0)
    ws = w.sum(1)
    valid = ws > 0
    p = w[valid] / ws[valid, None]
    ent = -(p * torch.log(p.clamp_min(1e-30))).sum(1)
    return float(ent.mean())


@torch.no_grad()
def terms_on(model: torch.nn.Module, split: Any, contract: Any, tau: float, batches: int, bs: int) -> dict[str, float]:
    """Mean of every objective term over ``batches`` fixed validation batches (eval mode)."""
    model.eval()
    gen = torch.Generator().manual_seed(1234)
    sums: dict[str, float] = {}
    idx = epoch_batches(len(split), bs, 99, 0)[:batches]
    for b in split.iter_batches(idx):
        s1, o1 = augment_pair(b["sar"], b["optical"], contract, AugmentConfig(), gen)
        s2, o2 = augment_pair(b["sar"], b["optical"], contract, AugmentConfig(), gen)
        v1, v2 = model(s1, o1), model(s2, o2)
        a1, a2, c1, c2 = v1["emb_sar"], v2["emb_sar"], v1["emb_optical"], v2["emb_optical"]
        y = b["labels"]
        vals = {
            "ntxent_s1": nt_xent(a1, a2, tau),
            "ntxent_s2": nt_xent(c1, c2, tau),
            "inter": 0.5 * (symmetric_infonce(a1, c1, tau) + symmetric_infonce(a2, c2, tau)),
            "sup": multilabel_supcon(torch.cat([a1, c1, a2, c2]), y.repeat(4, 1), tau),
        }
        for k, v in vals.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        sums["sup_floor"] = sums.get("sup_floor", 0.0) + supcon_floor(y)
        sums["sup_uniform"] = sums.get("sup_uniform", 0.0) + math.log(4 * len(y) - 1)
    return {k: v / len(idx) for k, v in sums.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("runs/supcon"))
    ap.add_argument("--out", type=Path, default=None, help="write all rows as JSON here")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--only", nargs="*", default=None, help="variant names to run (default: all)")
    ap.add_argument("--seed", type=int, default=0, help="seeds weights, data and augmentations")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = TrainConfig(finetune_epochs=0, log_every=1000, seed=args.seed)
    rows = json.loads(args.out.read_text()) if args.out and args.out.is_file() else []
    done = {(r["variant"], r.get("seed", 0)) for r in rows}
    for name, kw in VARIANTS.items():
        if (args.only and name not in args.only) or (name, args.seed) in done:
            continue
        cfg = base.replace(**kw, out=str(args.root / f"{name.split(' (')[0].replace(' ', '-')}-s{args.seed}"))
        t0 = time.perf_counter()
        res = train(cfg)
        wall = time.perf_counter() - t0
        model, contract = load_checkpoint(cfg.out_dir / "model.pt")
        records = [json.loads(line) for line in (cfg.out_dir / "metrics.jsonl").read_text().splitlines()]
        pre = [r for r in records if r["phase"] == "pretrain"]
        val = load_split(cfg, contract, "validation")
        row = {
            "variant": name,
            "seed": args.seed,
            "config": kw,
            "train_curve": {k: [round(r[k], 4) for r in pre] for k in ("loss_s1", "loss_s2", "loss_inter",
                                                                        "loss_sup") if k in pre[0]},
            "val_terms_tau0.1": {k: round(v, 4) for k, v in terms_on(model, val, contract, 0.1, 3, 128).items()},
            "probe_val_macro_map": round(res.metrics["val"]["macro_map"], 4),
            "probe_test_macro_map": round(res.metrics["test"]["macro_map"], 4),
            "test_silhouette_features": round(res.metrics["test"].get("silhouette_features", float("nan")), 4),
            "test_silhouette_embeddings": round(res.metrics["test"]["silhouette"], 4),
            "wall_s": round(wall, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
