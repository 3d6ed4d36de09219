"""Does the SupCon weight that balances the objective at full labels also suit few labels?

Linear-probe runs (``mosaic-edge train --finetune-epochs 0 --min-labelled 4``, synthetic default otherwise) with
``--l-sup 1`` and ``--l-sup 4`` at 1 % and 10 % labels, seeds 0-2, one torch thread; rows (validation / test macro
mAP of the frozen encoder + linear heads, silhouette on encoder features) go to
``benchmarks/results/supcon_weight_low_label.json`` (resumes where it stopped).

    OMP_NUM_THREADS=1 python benchmarks/supcon_weight_low_label.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mosaic_edge.train.config import TrainConfig
from mosaic_edge.train.loop import train

OUT = Path("benchmarks/results/supcon_weight_low_label.json")


def main() -> None:
    torch.set_num_threads(1)
    rows = json.loads(OUT.read_text()) if OUT.is_file() else []
    done = {(r["label_fraction"], r["l_sup"], r["seed"]) for r in rows}
    for lf in (0.01, 0.1):
        for seed in (0, 1, 2):
            for w in (1.0, 4.0):
                if (lf, w, seed) in done:
                    continue
                cfg = TrainConfig(label_fraction=lf, l_sup=w, seed=seed, min_labelled=4, finetune_epochs=0,
                                  log_every=1000, out=f"runs/lsup/lf{lf}-w{w}-s{seed}")
                res = train(cfg)
                rows.append({"label_fraction": lf, "l_sup": w, "seed": seed, "min_labelled": 4,
                             "probe_val_macro_map": res.metrics["val"]["macro_map"],
                             "probe_test_macro_map": res.metrics["test"]["macro_map"],
                             "probe_silhouette_features": res.metrics["test"]["silhouette_features"]})
                print(json.dumps(rows[-1]), flush=True)
                OUT.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
