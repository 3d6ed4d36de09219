"""torchrun / DistributedDataParallel plumbing: the all-gather that keeps gradients, and SyncBatchNorm.

Contrastive losses need negatives from the whole global batch, so every rank gathers all ranks' embeddings and
computes the *global* loss (the same value on every rank). :class:`_GatherWithGrad` sums the incoming gradients
over ranks in backward (all-reduce, then the local slice), so each rank receives ``W * dL/dz_local``; DDP then
averages parameter gradients over the W ranks, which leaves exactly ``dL/dtheta`` of the global-batch loss. The
all-reduce works on gloo as well as NCCL (gloo has no reduce-scatter).

BatchNorm statistics of one rank's slice of the batch let a contrastive model tell the ranks' samples apart
(the two views of a patch share a rank, so per-rank statistics leak the pairing; SimCLR and MoCo synchronise BN
for this reason), so pre-training under DDP uses ``torch.nn.SyncBatchNorm``
(:func:`use_sync_batchnorm`; torch implements it for CUDA tensors only, so CPU / gloo runs keep per-process
BatchNorm and say so) and reverts to plain BatchNorm for the single-process phases after it
(:func:`revert_sync_batchnorm`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group described by torchrun's environment (``WORLD_SIZE`` > 1), else run single-process.

    The backend is NCCL on CUDA, gloo on CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def leave_process_group(info: DistInfo) -> None:
    """After the last collective: wait for every rank, then tear the group down on all of them together.

    Otherwise the other ranks would exit while rank 0 still holds the group open for phases 2-3, and a gloo rank
    that aborts on its way out ("terminate called without an active exception") makes torchrun kill rank 0
    before it has written the model.
    """
    if info.enabled and dist.is_initialized():
        dist.barrier()
        shutdown_distributed()


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` [n, ...] from all ranks in rank order (equal n per rank), keeping gradients.

    The identity without a process group or with one rank.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks (labels, masks); identity without a process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average a dict of scalars over ranks (for logging); unchanged without a process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist(), strict=True))


def use_sync_batchnorm(model: torch.nn.Module, info: DistInfo, device: torch.device, wanted: bool) -> bool:
    """Replace the BatchNorm layers of ``model`` (in place) by ``SyncBatchNorm`` when ``wanted`` under DDP.

    Returns whether it did: only with more than one process and on CUDA (torch's SyncBatchNorm refuses CPU
    tensors). Parameters and running statistics are shared with the layers they replace.
    """
    if not (wanted and info.enabled and device.type == "cuda"):
        return False
    torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # the root (not a BatchNorm) is kept, its layers swapped
    return True


def revert_sync_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """Turn every ``SyncBatchNorm`` of ``module`` back into ``BatchNorm2d`` (in place; parameters and running
    statistics shared), for the phases that run on one process."""
    if isinstance(module, torch.nn.SyncBatchNorm):
        bn = torch.nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                  module.track_running_stats)
        if module.affine:
            bn.weight, bn.bias = module.weight, module.bias
        bn.running_mean, bn.running_var = module.running_mean, module.running_var
        bn.num_batches_tracked = module.num_batches_tracked
        bn.train(module.training)
        return bn
    for name, child in list(module.named_children()):
        module.add_module(name, revert_sync_batchnorm(child))
    return module
