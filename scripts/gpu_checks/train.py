"""GPU check of the training stage: a few hundred AMP training steps on CUDA, reported as samples/s.

One row per configuration; without torch or CUDA a single ``skip`` row. Data are random tensors (throughput
only; the loss path is the real MoSAiC objective with all three terms, two augmented views, grad clipping and the
GradScaler when fp16).
"""

from __future__ import annotations

import time
from typing import Any

from . import fail, row, skip

# (arch, patch, batch, steps): the default CPU model and the full-size encoders at BigEarthNet resolution.
CASES: tuple[tuple[str, int, int, int], ...] = (
    ("resnet10_micro", 48, 256, 300),
    ("resnet18", 120, 128, 200),
    ("resnet50", 120, 64, 100),
)


def _bench(arch: str, patch: int, batch: int, steps: int, dtype: Any, warmup: int = 20) -> dict[str, Any]:
    import torch

    from mosaic_edge.contract import Contract
    from mosaic_edge.train.augment import AugmentConfig, augment_pair
    from mosaic_edge.train.models import build_model
    from mosaic_edge.train.objective import LossWeights, mosaic_loss

    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = build_model(arch).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    contract = Contract(patch_size=patch)
    sar = torch.randn(batch, 2, patch, patch, device=dev)
    opt_x = torch.randn(batch, 12, patch, patch, device=dev)
    labels = (torch.rand(batch, 19, device=dev) < 0.2).float()
    labelled = torch.ones(batch, dtype=torch.bool, device=dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    aug, w = AugmentConfig(), LossWeights()
    losses = []

    def step() -> None:
        s1, o1 = augment_pair(sar, opt_x, contract, aug, gen)
        s2, o2 = augment_pair(sar, opt_x, contract, aug, gen)
        with torch.autocast("cuda", dtype=dtype):
            out = model(torch.cat([s1, s2]), torch.cat([o1, o2]))
        v1 = {k: v[:batch] for k, v in out.items()}
        v2 = {k: v[batch:] for k, v in out.items()}
        loss, _ = mosaic_loss(v1, v2, labels, labelled, w)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        scaler.step(opt)
        scaler.update()
        losses.append(loss.detach())

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    first, last = float(losses[warmup]), float(losses[-1])
    finite = bool(torch.isfinite(torch.stack(losses)).all())
    return row(f"train_amp/{arch}", "ok" if finite else "fail", patch=patch, batch=batch, steps=steps,
               amp=str(dtype).replace("torch.", ""), samples_per_s=round(batch * steps / dt, 1),
               step_ms=round(1000 * dt / steps, 2), loss_first=round(first, 4), loss_last=round(last, 4),
               finite=finite, max_mem_gb=round(torch.cuda.max_memory_allocated() / 1e9, 2))


def run(cases: tuple[tuple[str, int, int, int], ...] = CASES) -> list[dict[str, Any]]:
    """Run the AMP training-throughput cases on CUDA; one row per case."""
    try:
        import torch
    except ImportError:
        return [skip("train_amp", "torch is not installed")]
    if not torch.cuda.is_available():
        return [skip("train_amp", "no CUDA device")]
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    rows = []
    for arch, patch, batch, steps in cases:
        try:
            rows.append(_bench(arch, patch, batch, steps, dtype))
        except Exception as exc:  # noqa: BLE001 - report and go on with the next case
            rows.append(fail(f"train_amp/{arch}", exc))
        finally:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    dev = torch.cuda.get_device_name(0)
    for r in rows:
        r["device"] = dev
    return rows
