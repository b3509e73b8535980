"""One training step, one home (``fastssl.step``): the train-step benchmark's step is the training loop's
step (identical parameters after the same steps), its lr follows ``--lr-scaling``, and nothing outside
``fastssl/step.py`` runs the pretraining optimiser."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data_prep import load_dataset
from fastssl.config import parse_args, resolve
from fastssl.checkpoint import load_checkpoint
from fastssl.step import Step, build_method
from fastssl.train import train

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import train_step as bench_step  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("method", ["simclr", "byol"])  # byol: the on_step EMA hook moves the target too
def test_bench_step_equals_training_step(tmp_path, tiny_folder, method):
    """train() for 3 steps, and the benchmark's row (``bench.train_step.build_timer``) for 3 steps, from the
    same Config: the same parameters and buffers, bit for bit."""
    cfg = resolve(parse_args(["--method", method, "--dataset", "images", "--data", str(tiny_folder),
                              "--out", str(tmp_path / "run"), "--width", "8", "--batch-size", "16",
                              "--train-subset", "48", "--epochs", "1", "--proj-hidden", "32", "--proj-dim", "16",
                              "--knn-k", "5", "--no-linear-eval", "--device", "cpu", "--no-progress",
                              "--lr-scaling", "sqrt", "--amp", "off", "--compile", "off", "--kernels", "torch"]))
    assert train(cfg)["steps"] == 3
    trained = load_checkpoint(tmp_path / "run")["method"]

    timer = bench_step.build_timer(cfg, torch.device("cpu"), load_dataset("images", str(tiny_folder)))
    timer.run(3)
    benched = timer.method.state_dict()
    assert trained.keys() == benched.keys()
    for name, value in benched.items():
        assert torch.equal(value, trained[name]), name
    fresh = build_method(cfg).state_dict()  # and the 3 steps did move the weights
    assert any(not torch.equal(fresh[k], benched[k]) for k in benched if benched[k].is_floating_point())


def test_step_lr_follows_lr_scaling_and_fixed_groups():
    cfg = resolve(parse_args(["--method", "simclr", "--device", "cpu", "--width", "8", "--proj-hidden", "16",
                              "--proj-dim", "8", "--batch-size", "64", "--lr", "0.4", "--lr-scaling", "sqrt"]))
    step = Step(cfg, build_method(cfg), torch.device("cpu"), steps_per_epoch=10)
    assert step.peak_lr == pytest.approx(0.4 * (64 / 256) ** 0.5)
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32  # training's settings
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)]
    loss = step(views, torch.arange(8) % 2, 0.123, (0, 10))
    assert loss.ndim == 0 and not loss.requires_grad and torch.isfinite(loss)
    assert [grp["lr"] for grp in step.optimizer.param_groups] == \
        [step.peak_lr if grp.get("fixed_lr") else 0.123 for grp in step.optimizer.param_groups]


def test_only_step_runs_the_pretraining_optimiser():
    """``backward(`` / ``.step()`` outside fastssl/step.py: only the supervised evaluation loops (eval.py), the
    autograd Functions' ``backward`` definitions (distributed.py) and the gradients the kernel and DINO-head
    benchmarks time."""
    out = subprocess.run(["grep", "-rn", r"backward(\|\.step()", "fastssl", "scripts", "bench"], cwd=ROOT,
                         capture_output=True, text=True).stdout.splitlines()
    allowed = re.compile(r"^(fastssl/step\.py|fastssl/eval\.py|fastssl/distributed\.py:\d+:\s+def backward"
                         r"|bench/kernels\.py|bench/dino_head\.py)")
    assert [line for line in out if not allowed.match(line)] == []
    assert any(line.startswith("fastssl/step.py") for line in out)
