"""Data-parallel training on CPU: 2 processes on the gloo backend, spawned inside the tests.

* sharding: every loader gives each rank a contiguous slice of every global batch, the slices cover
  each index exactly once per epoch, and (resident, torch, ffcv with device crops) a rank's views are
  exactly those rows of the single-process batch's views;
* the collectives: the gathered losses (NT-Xent, decoupled, SupCon on the reference path and in the
  Triton kernel's local-rows mode under TRITON_INTERPRET=1) and every method with its BatchNorms
  synchronised, wrapped in DDP, give the single-process loss on the concatenated batch and the same
  parameter gradients after DDP's averaging;
* training: a 2-process run has the same first-step loss, the same losses and the same weights as
  a 1-process run with the same global batch, and a checkpoint written by 2 ranks resumes on 1 and
  vice versa.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from data_prep.dataset import Dataset
from fastssl import distributed
from fastssl.augment import TwoViewAugment, policy_pair
from fastssl.data import shard_rows
from fastssl.loaders import make_loader

from ddp_helpers import free_port, randomise_batchnorm

WORLD = 2


# ------------------------------------------------------------------------------------------------
# Spawning helpers
# ------------------------------------------------------------------------------------------------

def _worker(rank, world, port, fn_name, args):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        globals()[fn_name](rank, world, *args)
    finally:
        dist.destroy_process_group()


def spawn(fn, *args, env=None):
    """Run ``fn(rank, world, *args)`` in WORLD processes of one gloo group; exceptions propagate."""
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        mp.spawn(_worker, args=(WORLD, free_port(), fn.__name__, args), nprocs=WORLD, join=True)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ------------------------------------------------------------------------------------------------
# Sharding
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 7, 16, 33])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shard_rows_partition(n, world):
    parts = [shard_rows(n, r, world) for r in range(world)]
    assert parts[0][0] == 0 and parts[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))  # contiguous, in rank order
    sizes = [hi - lo for lo, hi in parts]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == n
    with pytest.raises(ValueError):
        shard_rows(n, world, world)


def _photo_like(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32]
    base = rng.uniform(40, 215, (n, 1, 1, 3)) + xx[None, ..., None] * rng.uniform(-3, 3, (n, 1, 1, 3))
    return (base + yy[None, ..., None] * rng.uniform(-3, 3, (n, 1, 1, 3))).clip(0, 255).astype(np.uint8)


LOADER_CASES = {  # name, options, package, whether a shard's views equal the single-process rows
    "resident": ("resident", {}, None, True),
    "torch": ("torch", {"workers": 0}, None, True),
    "ffcv": ("ffcv", {"workers": 1}, "ffcv", True),
    "dali": ("dali", {"threads": 1}, "nvidia.dali", False),
}


@pytest.mark.parametrize("key", list(LOADER_CASES))
def test_loader_shards_cover_every_index_once(key, tmp_path):
    name, opts, package, same_views = LOADER_CASES[key]
    if package:
        pytest.importorskip(package)
    n, batch = 44, 8  # 5 global batches of 8 (4 dropped), 4 images per rank and step
    images = _photo_like(n)
    labels = np.arange(n, dtype=np.int64)  # label = index
    ds = Dataset("cifar10", images, labels, images[:4], labels[:4], [str(i) for i in range(n)], "synthetic")
    aug = TwoViewAugment(*policy_pair("default"), ds.mean, ds.std)

    loaders = {(rank, world): make_loader(name, ds, None, batch, aug, "cpu", seed=5, cache_dir=tmp_path, verbose=False,
                                          rank=rank, world=world, **opts)
               for rank, world in [(0, 1)] + [(r, WORLD) for r in range(WORLD)]}

    def epoch(rank, world, e):
        ld = loaders[rank, world]
        assert len(ld) == n // batch  # global steps
        ld.set_epoch(e)
        return [(v1.clone(), v2.clone(), y.clone()) for (v1, v2), y in ld]

    for e in (0, 1):
        single = epoch(0, 1, e)
        shards = [epoch(r, WORLD, e) for r in range(WORLD)]
        seen = []
        for step, (v1, v2, y) in enumerate(single):
            parts = [s[step] for s in shards]
            assert [len(p[2]) for p in parts] == [batch // WORLD] * WORLD
            assert torch.equal(torch.cat([p[2] for p in parts]), y)  # rank slices of the global batch, in order
            if same_views:
                torch.testing.assert_close(torch.cat([p[0] for p in parts]), v1, rtol=0, atol=1e-6)
                torch.testing.assert_close(torch.cat([p[1] for p in parts]), v2, rtol=0, atol=1e-6)
            seen += torch.cat([p[2] for p in parts]).tolist()
        assert len(seen) == len(set(seen)) == (n // batch) * batch  # each index at most once, drop_last's share


def test_augment_rows_slice_equals_whole_batch():
    x = torch.from_numpy(_photo_like(10)).permute(0, 3, 1, 2).contiguous()
    aug = TwoViewAugment(*policy_pair("symmetric"), (120, 120, 120), (60, 60, 60))  # blur too
    whole = aug(x, generator=torch.Generator().manual_seed(3))
    part = aug(x[4:7], generator=torch.Generator().manual_seed(3), rows=(4, 10))
    for w, p in zip(whole, part):
        torch.testing.assert_close(p, w[4:7], rtol=0, atol=1e-6)
    with pytest.raises(ValueError):
        aug(x[4:7], generator=torch.Generator().manual_seed(3), rows=(8, 10))


# ------------------------------------------------------------------------------------------------
# Gathered losses and methods: 2 ranks == 1 process on the concatenated batch
# ------------------------------------------------------------------------------------------------

B, FEAT, DIM = 10, 12, 20  # global batch (5 per rank), input and embedding width


@pytest.mark.parametrize("case", ["simclr", "decoupled", "supcon"])
def test_contrastive_rows_loss_partitions_the_reference(case, float64):
    from fastssl import losses
    g = torch.Generator().manual_seed(0)
    z1, z2, y = torch.randn(9, 7, generator=g), torch.randn(9, 7, generator=g), torch.randint(0, 3, (9,), generator=g)
    labels = y if case == "supcon" else None
    variant = "simclr" if case == "supcon" else case
    full = losses.supcon_loss(z1, z2, y, 0.3) if labels is not None else losses.ntxent_loss(z1, z2, 0.3, variant)
    rows = lambda idx: torch.cat([torch.tensor(idx), 9 + torch.tensor(idx)])  # noqa: E731
    part = [losses.contrastive_rows_loss(z1, z2, 0.3, rows(idx), labels=labels, variant=variant)
            for idx in ([0, 1, 2], [3, 4, 5], [6, 7, 8])]
    torch.testing.assert_close(torch.stack(part).mean(), full)
    torch.testing.assert_close(losses.contrastive_rows_loss(z1, z2, 0.3, torch.arange(18), labels, variant), full)
    assert not torch.allclose(part[0], part[1])


def _global_inputs():
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(B, FEAT, generator=g), torch.randn(B, FEAT, generator=g)
    y = torch.randint(0, 3, (B,), generator=g)
    return x1, x2, y


def _linear():
    torch.manual_seed(1)
    return torch.nn.Linear(FEAT, DIM)


# multiview<V> / supcon-multiview<V>: V views of each image (the two inputs and derived ones), the
# multi-positive loss through dispatch.multiview_contrastive_loss (V even: the SupCon path; V odd: the
# gathered reference)
LOSS_CASES = ["simclr", "decoupled", "supcon", "barlow", "triplet", "multiview4", "multiview3", "supcon-multiview4"]


def _loss(case, z1, z2, y, backend="torch"):
    """The loss a rank back-propagates for ``case``, written as the methods write it."""
    from fastssl import losses
    from fastssl import dispatch
    if "multiview" in case:
        zs = [z1, z2, z1 + z2, z2 - 0.5 * z1][:int(case[-1])]
        labels = y if case.startswith("supcon") else None
        return dispatch.multiview_contrastive_loss(zs, 0.3, labels=labels, backend=backend)
    if case in ("simclr", "decoupled"):
        return dispatch.contrastive_loss(z1, z2, 0.3, variant=case, backend=backend)
    if case == "supcon":
        return dispatch.contrastive_loss(z1, z2, 0.3, labels=y, backend=backend)
    gather = distributed.all_gather_with_grad
    if case == "barlow":
        return losses.barlow_twins_loss(gather(z1), gather(z2))
    z = torch.cat([gather(z1), gather(z2)])
    y = distributed.all_gather_nograd(y)
    return losses.triplet_loss(z, torch.cat([y, y]), margin=0.5)


def _reference(case):
    """Single-process loss and parameter gradients on the whole batch (no process group here)."""
    x1, x2, y = _global_inputs()
    lin = _linear()
    loss = _loss(case, lin(x1), lin(x2), y)
    loss.backward()
    return loss.detach(), [p.grad for p in lin.parameters()]


def _losses(rank, world, out, backend, cases):
    from torch.nn.parallel import DistributedDataParallel as DDP
    x1, x2, y = _global_inputs()
    lo, hi = shard_rows(B, rank, world)
    results = {}
    for case in cases:
        model = DDP(_linear())
        if backend == "triton":
            from kernels.contrastive import block_sizes
            with block_sizes(16, 16):  # tiles straddle the views and the ranks' rows (2 x 5 local rows)
                loss = _loss(case, model(x1[lo:hi]), model(x2[lo:hi]), y[lo:hi], backend)
                loss.backward()
        else:
            loss = _loss(case, model(x1[lo:hi]), model(x2[lo:hi]), y[lo:hi], backend)
            loss.backward()
        results[case] = dict(loss=distributed.all_reduce_mean(loss).item(),
                             grads=[p.grad.clone() for p in model.parameters()])
    torch.save(results, out / f"losses-{backend}-{rank}.pt")


def _check_losses(out, backend, cases):
    for rank in range(WORLD):
        got = torch.load(out / f"losses-{backend}-{rank}.pt")
        for case in cases:
            loss, grads = _reference(case)
            assert got[case]["loss"] == pytest.approx(loss.item(), rel=1e-5), case
            for g, ref in zip(got[case]["grads"], grads):
                torch.testing.assert_close(g, ref, rtol=1e-4, atol=1e-6, msg=lambda m: f"{case}: {m}")


FUSED_CASES = ["simclr", "decoupled", "supcon", "multiview4", "supcon-multiview4"]


def _has_triton() -> bool:
    import importlib.util
    return importlib.util.find_spec("triton") is not None


def _collectives_worker(rank, world, out):
    _losses(rank, world, out, "torch", LOSS_CASES)
    if _has_triton():
        _losses(rank, world, out, "triton", FUSED_CASES)
    torch.save({m: _method_step(m, world, rank) for m in METHODS}, out / f"methods-{rank}.pt")
    torch.save({m: _method_step(m, world, rank, local_views=True) for m in MULTICROP_METHODS},
               out / f"multicrop-{rank}.pt")


@pytest.fixture(scope="module")
def collectives(tmp_path_factory):
    """One 2-process job (process start-up dominates on this CPU) for the next three tests; Triton's
    interpreter is on in the workers (only the fused-kernel cases use Triton)."""
    out = tmp_path_factory.mktemp("collectives")
    spawn(_collectives_worker, out, env={"TRITON_INTERPRET": "1"})
    return out


def test_gathered_losses_and_gradients_match_one_process(collectives):
    _check_losses(collectives, "torch", LOSS_CASES)


def test_fused_kernel_local_rows_match_one_process(collectives):
    """The Triton kernel's local-rows mode (each rank: its rows against the gathered columns), in the
    interpreter; the reference loss and gradients are computed here on the whole batch."""
    if not _has_triton():
        pytest.skip("triton is not installed")
    _check_losses(collectives, "triton", FUSED_CASES)


METHODS = ["simclr", "dare", "supcon", "triplet", "barlow", "simsiam", "byol"]


def _method_cfg(name):
    from fastssl.config import parse_args, resolve
    return resolve(parse_args(["--method", name, "--device", "cpu", "--width", "8", "--proj-hidden", "16",
                               "--proj-dim", "8", "--kernels", "torch"]))


def _method(name, world):
    from fastssl import methods
    from fastssl.models import build_encoder
    torch.manual_seed(0)
    m = methods.get_method(name)(build_encoder("resnet18", 8), _method_cfg(name)).double()
    g = torch.Generator().manual_seed(1)
    randomise_batchnorm(m, g)
    return distributed.convert_batchnorm(m, torch.device("cpu")) if world > 1 else m


# with 2 global + 2 local views (3 for the contrastive ones: the odd, gathered-reference route)
MULTICROP_METHODS = ["simclr", "supcon", "dare", "byol", "barlow"]


def _views(local_views=False, name=""):
    g = torch.Generator().manual_seed(2)
    v1, v2 = torch.randn(8, 3, 16, 16, generator=g).double(), torch.randn(8, 3, 16, 16, generator=g).double()
    local = [torch.randn(8, 3, 8, 8, generator=g).double() for _ in range(2)] if local_views else []
    if name in ("simclr", "supcon"):
        local = local[:1]
    return [v1, v2, *local], torch.tensor([0, 1, 0, 2, 1, 1, 0, 2])


def _method_step(name, world, rank=0, local_views=False):
    """One forward/backward of ``name`` on the global batch (world 1) or this rank's shard (DDP)."""
    views, y = _views(local_views, name)
    method = _method(name, world)
    model = method
    if world > 1:
        model = distributed.wrap_ddp(method, torch.device("cpu"))
        lo, hi = shard_rows(len(y), rank, world)
        views, y = [v[lo:hi] for v in views], y[lo:hi]
    torch.manual_seed(7)  # DARe's noise
    loss = model(views, y if method.uses_labels else None)["loss"]
    loss.backward()
    grads = {k: p.grad.clone() for k, p in method.named_parameters() if p.grad is not None}
    buffers = {k: b.clone() for k, b in method.named_buffers()}
    return distributed.all_reduce_mean(loss).item(), grads, buffers


def test_methods_with_synced_batchnorm_match_one_process(collectives):
    """Every method, its BatchNorms over the global batch (CrossRankBatchNorm), wrapped in DDP: the same
    loss, parameter gradients and BatchNorm running statistics as one process on the whole batch."""
    got = torch.load(collectives / "methods-0.pt")
    other = torch.load(collectives / "methods-1.pt")
    for m in METHODS:
        loss, grads, buffers = _method_step(m, 1)
        assert got[m][0] == pytest.approx(loss, rel=1e-6), m
        assert grads.keys() == got[m][1].keys() and len(grads) > 10
        for k in grads:
            torch.testing.assert_close(got[m][1][k], grads[k], rtol=1e-4, atol=1e-6, msg=lambda s: f"{m} {k}: {s}")
            torch.testing.assert_close(other[m][1][k], grads[k], rtol=1e-4, atol=1e-6)
        for k in buffers:
            torch.testing.assert_close(got[m][2][k], buffers[k], rtol=1e-6, atol=1e-9, msg=lambda s: f"{m} {k}: {s}")


def test_methods_with_local_views_match_one_process(collectives):
    """Multi-crop under DDP: global and local views (the local ones batched through synced BatchNorm)
    give the single-process loss and gradients (simclr/supcon with 3 views: the gathered reference)."""
    for rank in range(WORLD):
        got = torch.load(collectives / f"multicrop-{rank}.pt")
        for m in MULTICROP_METHODS:
            loss, grads, _ = _method_step(m, 1, local_views=True)
            assert got[m][0] == pytest.approx(loss, rel=1e-6), m
            assert grads.keys() == got[m][1].keys() and len(grads) > 10
            for k in grads:
                torch.testing.assert_close(got[m][1][k], grads[k], rtol=1e-4, atol=1e-6, msg=lambda s: f"{m} {k}: {s}")


def test_cross_rank_batchnorm_is_batchnorm_without_a_group():
    bn = torch.nn.BatchNorm2d(3)
    cross = distributed.convert_batchnorm(torch.nn.Sequential(bn), torch.device("cpu"))[0]
    assert isinstance(cross, distributed.CrossRankBatchNorm) and cross.weight is bn.weight
    assert cross.state_dict().keys() == bn.state_dict().keys()
    x = torch.randn(4, 3, 5, 5)
    ref = torch.nn.BatchNorm2d(3)
    torch.testing.assert_close(cross(x), ref(x))
    torch.testing.assert_close(cross.running_var, ref.running_var)


# ------------------------------------------------------------------------------------------------
# Training runs: 2 processes == 1 process; checkpoints move between them
# ------------------------------------------------------------------------------------------------

def _args(data, out, *extra):
    return ["--method", "simclr", "--data", str(data), "--out", str(out), "--width", "8", "--batch-size", "16",
            "--train-subset", "16", "--epochs", "2", "--proj-hidden", "32", "--proj-dim", "16", "--knn-k", "5",
            "--knn-bank", "20", "--knn-queries", "10", "--no-linear-eval", "--device", "cpu", "--no-progress",
            "--warmup-epochs", "0.5", *extra]


class _Interrupt:
    """Replace the training loader so that the run stops when the second epoch begins (after epoch 1's checkpoint)."""

    def __init__(self, train_mod):
        self.real = train_mod.training_loader

    def __call__(self, *args, **kwargs):
        ld = self.real(*args, **kwargs)
        set_epoch = ld.set_epoch

        def stop_at_second(epoch):
            if epoch == 1:
                raise KeyboardInterrupt
            set_epoch(epoch)
        ld.set_epoch = stop_at_second
        return ld


def _run(args, interrupt=False):
    from fastssl import train as train_mod
    from fastssl.cli import main
    real = train_mod.training_loader
    if interrupt:
        train_mod.training_loader = _Interrupt(train_mod)
    try:
        return main(args)
    finally:
        train_mod.training_loader = real


def _train_worker(rank, world, data, root):
    codes = [_run(_args(data, root / "two")),                                 # a whole 2-rank run
             _run(_args(data, root / "two-part"), interrupt=True),            # 2 ranks, stopped after epoch 1
             _run(_args(data, root / "one-part", "--resume"))]                # resumes a 1-process checkpoint
    (root / f"codes-{rank}.json").write_text(json.dumps(codes))


def _state(out):
    return torch.load(out / "checkpoint.pt", weights_only=True)


def _same_weights(a, b, atol):
    assert a["method"].keys() == b["method"].keys()
    assert not any(k.startswith("module.") for k in a["method"])
    for k in a["method"]:
        torch.testing.assert_close(a["method"][k].float(), b["method"][k].float(), rtol=1e-4, atol=atol,
                                   msg=lambda s: f"{k}: {s}")


# After the first step both runs agree to ~1e-6. The second step's gradient of this tiny network is
# ill-conditioned (measured: a 1e-6 relative perturbation of the weights, or float32 instead of float64,
# changes some BatchNorm-parameter gradients by 2-5%), and LARS applies them unscaled with lr 0.0125,
# so the weights after two steps agree to ~2e-4; a wrong gradient would be off by ~lr |g| ~ 1e-2.
AFTER_ONE_STEP, AFTER_TWO_STEPS = 1e-5, 1e-3


def test_two_process_training_matches_one_process_and_checkpoints_move(tmp_path, tiny_folder):
    torch.set_num_threads(1)
    assert _run(_args(tiny_folder, tmp_path / "one")) == 0
    assert _run(_args(tiny_folder, tmp_path / "one-part"), interrupt=True) == 130
    one_first = _state(tmp_path / "one-part")
    assert one_first["epoch"] == 1

    spawn(_train_worker, tiny_folder, tmp_path)
    assert json.loads((tmp_path / "codes-0.json").read_text()) == [0, 130, 0]
    assert json.loads((tmp_path / "codes-1.json").read_text()) == [0, 130, 0]
    two_first = _state(tmp_path / "two-part")
    assert two_first["epoch"] == 1
    _same_weights(two_first, one_first, AFTER_ONE_STEP)  # the first optimiser step: 2 ranks == 1 process
    for a, b in zip(two_first["optimizer"]["state"].values(), one_first["optimizer"]["state"].values()):
        torch.testing.assert_close(a["momentum_buffer"], b["momentum_buffer"], rtol=1e-4, atol=1e-6)
    assert _run(_args(tiny_folder, tmp_path / "two-part", "--resume")) == 0  # 2-rank checkpoint, 1 process

    one = [r for r in map(json.loads, (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()) if r.get("event", "epoch") == "epoch"]
    two = [r for r in map(json.loads, (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()) if r.get("event", "epoch") == "epoch"]
    # One step per epoch: epoch 1's loss is the first step's (same images, views, init); epoch 2 follows
    # the first optimiser step.
    assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2]
    assert two[0]["loss"] == pytest.approx(one[0]["loss"], rel=1e-5)
    assert two[1]["loss"] == pytest.approx(one[1]["loss"], rel=1e-4)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["images_seen"] == 32 and "2 x cpu" in summary["device"]
    assert summary["knn_top1_init"] == json.loads((tmp_path / "one" / "summary.json").read_text())["knn_top1_init"]
    ref = _state(tmp_path / "one")
    for out in ("two", "two-part", "one-part"):  # whole 2-rank run; 2 -> 1 resume; 1 -> 2 resume
        got = _state(tmp_path / out)
        assert got["epoch"] == 2
        _same_weights(got, ref, AFTER_TWO_STEPS)
        assert [r["loss"] for r in got["history"]] == pytest.approx([r["loss"] for r in one], rel=1e-4)
    assert not (tmp_path / "two" / "checkpoint.pt.tmp").exists()


def test_global_batch_must_divide_by_world_size(monkeypatch, capsys):
    from fastssl.cli import main
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert main(["--method", "simclr", "--device", "cpu", "--batch-size", "16"]) == 2
    err = capsys.readouterr().err.strip()
    assert "divisible" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("rule,expected", [("linear", 0.4 * 2), ("sqrt", 0.4 * 2 ** 0.5), ("none", 0.4)])
def test_lr_scaling_rule(rule, expected):
    from fastssl.config import parse_args, resolve
    from fastssl.step import peak_learning_rate
    cfg = resolve(parse_args(["--device", "cpu", "--lr", "0.4", "--batch-size", "512", "--lr-scaling", rule]))
    assert peak_learning_rate(cfg) == pytest.approx(expected)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
