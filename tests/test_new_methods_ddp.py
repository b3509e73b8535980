"""VICReg, MoCo v3 and DINO under 2-process DDP (gloo, CPU) equal one process on the concatenated batch:
the loss, every parameter gradient, and after ``on_step`` the whole state (EMA networks, BatchNorm
running statistics of both networks, DINO's centre), with two views and with two extra local views. The BatchNorms are synchronised
(CrossRankBatchNorm); the networks run in float64, the losses in float32 (as the methods compute them),
hence the tolerances of tests/test_distributed.py."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastssl import distributed
from fastssl.data import shard_rows
from ddp_helpers import free_port, randomise_batchnorm
from new_methods_helpers import build

WORLD = 2
METHODS = ["vicreg", "mocov3", "dino"]


def _worker(rank, world, port, out):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {(m, local): _step(m, world, rank, local) for m in METHODS for local in (False, True)}
        torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _method(name, world):
    m = build(name, dino_prototypes=16).double()
    g = torch.Generator().manual_seed(1)
    randomise_batchnorm(m, g)
    with torch.no_grad():
        for p in getattr(m, "target_parameters", list)():  # a momentum network unlike the online one
            p.add_(0.02 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return distributed.convert_batchnorm(m, torch.device("cpu")) if world > 1 else m


def _views(local):
    g = torch.Generator().manual_seed(2)
    views = [torch.randn(8, 3, 16, 16, generator=g).double() for _ in range(2)]
    return views + ([torch.randn(8, 3, 8, 8, generator=g).double() for _ in range(2)] if local else [])


def _step(name, world, rank=0, local=False):
    """One forward/backward on the global batch (world 1) or this rank's shard under DDP."""
    views = _views(local)
    method = _method(name, world)
    model = method
    if world > 1:
        model = distributed.wrap_ddp(method, torch.device("cpu"))
        lo, hi = shard_rows(len(views[0]), rank, world)
        views = [v[lo:hi] for v in views]
    loss = model(views)["loss"]
    loss.backward()
    grads = {k: p.grad.clone() for k, p in method.named_parameters() if p.grad is not None}
    method.on_step(0, 10)  # the EMA networks and DINO's centre (over every rank's batch) move here
    state = {k: v.clone() for k, v in method.state_dict().items()}
    return distributed.all_reduce_mean(loss).item(), grads, state


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(WORLD, free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("local", [False, True], ids=["2views", "2+2views"])
@pytest.mark.parametrize("name", METHODS)
def test_two_processes_equal_one(ranks, name, local):
    loss, grads, buffers = _step(name, 1, local=local)
    for got in ranks:
        g_loss, g_grads, g_buffers = got[name, local]
        assert g_loss == pytest.approx(loss, rel=1e-6), name
        assert g_grads.keys() == grads.keys() and len(grads) > 10
        for k in grads:
            torch.testing.assert_close(g_grads[k], grads[k], rtol=1e-4, atol=1e-6, msg=lambda s: f"{name} {k}: {s}")
        assert g_buffers.keys() == buffers.keys()
        for k in buffers:
            torch.testing.assert_close(g_buffers[k], buffers[k], rtol=1e-6, atol=1e-9,
                                       msg=lambda s: f"{name} {k}: {s}")
