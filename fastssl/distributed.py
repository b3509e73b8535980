"""Data-parallel training on torch.distributed: process group set-up from torchrun's environment,
the sharding rule, gradient-correct collectives and a cross-rank BatchNorm for CPU (gloo).

Launch: ``torchrun --nproc_per_node=K scripts/pretrain.py ...`` sets RANK, WORLD_SIZE, LOCAL_RANK
(and MASTER_ADDR/PORT); :func:`init` joins the group (NCCL on CUDA, gloo on CPU). Without
WORLD_SIZE > 1 nothing here does anything and training is the single-process run.

Conventions that make K ranks with global batch B equal one process with batch B:

* Sharding: every loader cuts the epoch's (seed, epoch) permutation into global batches of B
  indices, and rank r takes the contiguous slice ``fastssl.data.shard_rows(len(batch), r, K)`` of each: the K local
  batches concatenated in rank order are the single-process batch.
* Losses: the quantity a rank back-propagates, ``loss_r``, is chosen so that the global loss is
  the mean over ranks, L = (1/K) sum_r loss_r (a per-sample mean over local rows, or the full
  global loss computed identically on every rank). DDP averages parameter gradients over ranks,
  so what each rank must back-propagate into its own rows is d(sum_r' loss_r')/d(own rows) = K dL/d(own rows).
  :func:`all_gather_with_grad` achieves this: its backward all-reduces (sums) the incoming
  gradient of the gathered tensor and returns this rank's rows. :class:`CrossRankBatchNorm` uses
  the same rule for its statistics (as torch's SyncBatchNorm does).
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
from torch import nn



def env_world_size() -> int:
    """WORLD_SIZE from the environment (torchrun sets it); 1 when absent."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def env_rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def enabled() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if enabled() else 0


def world_size() -> int:
    return dist.get_world_size() if enabled() else 1


def is_main() -> bool:
    """Rank 0 (or a single process): the one that prints, evaluates and writes files."""
    return rank() == 0


def local_rank() -> int:
    """This process's index on its node (torchrun's LOCAL_RANK); 0 without a group."""
    return int(os.environ.get("LOCAL_RANK", "0")) if enabled() else 0


def barrier() -> None:
    if enabled():
        dist.barrier()


def init(device: str) -> tuple[torch.device, bool]:
    """Join torchrun's process group when WORLD_SIZE > 1; returns (this rank's device, whether this
    call created the group). CUDA ranks use NCCL and GPU LOCAL_RANK; CPU ranks use gloo."""
    kind = torch.device(device).type
    if enabled() or env_world_size() == 1:
        if kind == "cuda" and enabled():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            return torch.device("cuda", local), False
        return torch.device(device), False
    if kind == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local),
                                timeout=datetime.timedelta(minutes=30))
        return torch.device("cuda", local), True
    dist.init_process_group("gloo", timeout=datetime.timedelta(minutes=30))
    return torch.device(device), True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------
# Collectives
# ------------------------------------------------------------------------------------------------

def all_gather_nograd(x: torch.Tensor) -> torch.Tensor:
    """Rows of every rank concatenated in rank order (all ranks must hold the same shape); no gradient.
    Without a process group: ``x`` itself, traced by torch.compile without a graph break (the
    collectives behind the group check stay outside the graph)."""
    return _all_gather_nograd(x) if enabled() else x


@torch.compiler.disable
def _all_gather_nograd(x: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.rows = x.shape[0]
        return all_gather_nograd(x)

    @staticmethod
    def backward(ctx, grad):
        # grad is d(loss_r)/d(gathered) on this rank; the sum over ranks is d(sum_r loss_r)/d(gathered),
        # whose own rows are what DDP's mean over ranks turns into the single-process gradient.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        lo = dist.get_rank() * ctx.rows
        return grad[lo:lo + ctx.rows]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(K n, ...) concatenation of every rank's (n, ...) rows, differentiable. Identity without a group.

    Backward: all-reduce (sum) the gradient of the gathered tensor, return this rank's rows. With
    per-rank losses whose mean over ranks is the global loss L (see the module docstring), this
    gives K dL/dx_r, which DDP's averaging turns into the single-process parameter gradient.
    """
    return _all_gather_with_grad(x) if enabled() else x


@torch.compiler.disable  # a graph break (with a group only): dynamo does not trace an autograd.Function's collectives
def _all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    return _AllGather.apply(x)


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def all_reduce_sum_with_grad(x: torch.Tensor) -> torch.Tensor:
    """sum over ranks of x, differentiable (backward: the sum over ranks of the gradients)."""
    return _all_reduce_sum_with_grad(x) if enabled() else x


@torch.compiler.disable
def _all_reduce_sum_with_grad(x: torch.Tensor) -> torch.Tensor:
    return _AllReduceSum.apply(x)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over ranks, no gradient (for logging and for stopping every rank on a NaN together)."""
    if not enabled():
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()


# ------------------------------------------------------------------------------------------------
# BatchNorm over the global batch
# ------------------------------------------------------------------------------------------------

class CrossRankBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics span every rank's batch; the CPU (gloo) stand-in for
    ``torch.nn.SyncBatchNorm``, which refuses CPU tensors (torch 2.13: "SyncBatchNorm expected
    input tensor to be on GPU"). Parameters and buffers are those of BatchNorm (same state_dict).

    Training: per channel, S1 = sum x and S2 = sum x^2 over every rank's (N, H, W) positions, one
    differentiable all-reduce of [S1, S2, count]; mean = S1 / n, var = S2 / n - mean^2 (biased, for
    normalising), y = (x - mean) / sqrt(var + eps) * weight + bias; the running statistics get the
    unbiased var * n / (n - 1), as BatchNorm's. Autograd differentiates through the all-reduce, so
    the gradient also flows through the other ranks' use of this rank's statistics. Evaluation: the
    running statistics, no communication.
    """

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x):
        self._check_input_dim(x)
        if not (self.training and enabled()):
            return super().forward(x)  # plain BatchNorm: evaluation, or a single process
        dims = [0] + list(range(2, x.dim()))
        xf = x if x.dtype in (torch.float32, torch.float64) else x.float()  # statistics in fp32 at least
        count = torch.full((1,), x.numel() / x.shape[1], dtype=xf.dtype, device=x.device)
        stats = all_reduce_sum_with_grad(torch.cat([xf.sum(dims), (xf * xf).sum(dims), count]))
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                self.running_var.lerp_((var.detach() * n / (n - 1).clamp_min(1)).to(self.running_var.dtype), m)
        shape = [1, c] + [1] * (x.dim() - 2)
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight.to(xf.dtype)
        shift = -mean * scale
        if self.bias is not None:
            shift = shift + self.bias.to(xf.dtype)
        return (xf * scale.view(shape) + shift.view(shape)).to(x.dtype)


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``module``: rank 0's parameters and buffers are broadcast once; no
    per-step buffer broadcast (synchronised BatchNorm keeps running statistics equal on every rank)."""
    import inspect
    ddp = nn.parallel.DistributedDataParallel
    no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters
                      else {"broadcast_buffers": False})  # torch >= 2.13 deprecates broadcast_buffers
    return ddp(module, device_ids=[device.index] if device.type == "cuda" else None, **no_buffer_sync)


def convert_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of ``module`` normalised over the global batch: ``torch.nn.SyncBatchNorm`` on
    CUDA, :class:`CrossRankBatchNorm` elsewhere. Parameters and buffers are kept (same state_dict)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_cross_rank(module)


def _to_cross_rank(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, CrossRankBatchNorm):
        out = CrossRankBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                 module.track_running_stats)
        out.train(module.training)
        with torch.no_grad():
            if module.affine:
                out.weight, out.bias = module.weight, module.bias
            if module.track_running_stats:
                out.running_mean, out.running_var = module.running_mean, module.running_var
                out.num_batches_tracked = module.num_batches_tracked
    for name, child in module.named_children():
        out.add_module(name, _to_cross_rank(child))
    return out


def from_rank0(value: float, device) -> float:
    """Rank 0's value on every rank (the clock and stop decisions must not differ between ranks)."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return float(t.item())
