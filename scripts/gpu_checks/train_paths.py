"""GPU check of the training paths: a few steps of each, through the real ``mosaic-edge train`` code.

``run()`` packs a small synthetic store, then trains on it (``mosaic_edge.train.loop.train``) twice -- eager and
with ``torch.compile`` -- with the GPU settings on: bf16 autocast where supported (else fp16 with the grad
scaler), channels_last, store loader threads filling pinned buffers, standardisation on the device, phase 2
(linear heads on labelled patches only) and phase 3 (fine-tune through the same loaders). A last row measures the
store loader alone (gathers, pinned copies, device-side standardisation) in patches/s. Rows in the format of
:mod:`scripts.gpu_checks`; without torch or CUDA every row is ``skip``. ``run(device="cpu")`` exercises the same
code on a CPU (the test suite does, tiny).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from mosaic_edge.data.synthetic import SyntheticConfig

from . import fail, row, skip

# Store size and training schedule of the check: seconds on a data-centre GPU, plus compilation.
SYNTHETIC = SyntheticConfig(n_train=1024, n_val=256, n_test=256, patch_size=48)
TRAIN = dict(arch="resnet10_micro", epochs=2, head_epochs=20, finetune_epochs=2, batch_size=256,
             label_fraction=0.1, num_workers=4, log_every=1000)


def _train_row(check: str, cfg: Any) -> dict[str, Any]:
    import torch

    from mosaic_edge.train.distributed import DistInfo
    from mosaic_edge.train.loop import amp_dtype, resolve_device, train

    t0 = time.perf_counter()
    res = train(cfg)
    wall = time.perf_counter() - t0
    recs = [json.loads(x) for x in (cfg.out_dir / "metrics.jsonl").read_text().splitlines()]
    pre = [r for r in recs if r["phase"] == "pretrain"]
    finite = all(torch.isfinite(torch.tensor(v)).item() for r in pre for k, v in r.items() if k.startswith("loss_"))
    dev = resolve_device(cfg, DistInfo())
    return row(check, "ok" if finite else "fail", device=str(dev), amp=str(amp_dtype(cfg, dev)).replace("torch.", ""),
               compile=cfg.compile, channels_last=pre[-1]["channels_last"], workers=cfg.num_workers,
               samples_per_s=[round(r["samples_per_s"], 1) for r in pre], phases=[r["phase"] for r in recs],
               test_macro_map=round(res.metrics["test"]["macro_map"], 4), train_s=round(wall, 1))


def loader_row(store: Path, cfg: Any, batches: int = 40) -> dict[str, Any]:
    """Patches/s of the store loader alone: thread gathers, pinned copies, device-side standardisation."""
    import torch

    from mosaic_edge.data.sources import contract_for
    from mosaic_edge.train.data import load_split
    from mosaic_edge.train.distributed import DistInfo
    from mosaic_edge.train.loop import resolve_device
    from mosaic_edge.train.sampling import epoch_batches

    dev = resolve_device(cfg, DistInfo())
    split = load_split(cfg, contract_for(store), "train")
    idx = (epoch_batches(len(split), cfg.batch_size, 0, e) for e in range(10_000))
    plan = [b for bs in idx for b in bs][:batches]
    for _ in split.iter_batches(plan[:4], dev):  # workers up, pages mapped
        pass
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    n = 0
    for b in split.iter_batches(plan, dev):
        n += len(b["sar"])
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return row("train_paths/store_loader", "ok", device=str(dev), workers=cfg.num_workers,
               patches_per_s=round(n / dt, 1), batch=cfg.batch_size, patch=SYNTHETIC.patch_size)


def run(device: str = "cuda", synthetic: SyntheticConfig = SYNTHETIC, pack_workers: int = 2,
        **overrides: Any) -> list[dict[str, Any]]:
    """Every training-path check on ``device``; one row per check (``overrides``: TrainConfig fields)."""
    checks = ("train_paths/eager", "train_paths/compiled", "train_paths/store_loader")
    try:
        import torch
    except ImportError:
        return [skip(c, "torch is not installed") for c in checks]
    if device.startswith("cuda") and not torch.cuda.is_available():
        return [skip(c, "no CUDA device") for c in checks]
    from mosaic_edge.data.pack import pack_dataset
    from mosaic_edge.data.sources import DataSpec
    from mosaic_edge.train.config import TrainConfig

    rows = []
    with tempfile.TemporaryDirectory(prefix="mosaic-gpu-train-") as tmp:
        store = Path(tmp) / "store"
        pack_dataset(DataSpec("synthetic", dataclasses.asdict(synthetic)), store, workers=pack_workers)
        cfg = TrainConfig(**{**TRAIN, **overrides}, data=str(store), device=device)
        for check, compile_ in ((checks[0], False), (checks[1], True)):
            try:
                rows.append(_train_row(check, cfg.replace(compile=compile_, out=str(Path(tmp) / check[12:]))))
            except Exception as exc:  # noqa: BLE001 - report and go on with the next check
                rows.append(fail(check, exc))
        try:
            rows.append(loader_row(store, cfg))
        except Exception as exc:  # noqa: BLE001
            rows.append(fail(checks[2], exc))
    if device.startswith("cuda"):
        for r in rows:
            r["gpu"] = torch.cuda.get_device_name(0)
    return rows


if __name__ == "__main__":
    for r in run():
        print(json.dumps(r))
