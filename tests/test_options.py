"""Methods own their options: a method file declares its hyper-parameters (``Option``), and Config,
``--help`` and ``--recipe`` pick them up with no second edit. The throwaway method below lives in a
temporary folder reached through ``FASTSSL_METHODS_PATH``, exactly as a new file in fastssl/methods/."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_prep import dataset_names
from fastssl import config, methods
from fastssl.config import parse_args, resolve
from fastssl.methods import base
from fastssl.methods.base import Method, Option, register

ROOT = Path(__file__).resolve().parents[1]

TOY = '''
"""Toy: SimCLR's loss times --toy-scale (a throwaway method for tests/test_options.py)."""
from pathlib import Path

from .. import losses
from ..models import mlp
from .base import Method, Option, register


@register("toy")
class Toy(Method):
    options = (Option("toy_scale", float, 0.5, "Toy: factor on the NT-Xent loss"),
               Option("toy_mode", str, "plain", "Toy: a choice", choices=("plain", "fancy")))
    recipe = dict(optimizer="sgd", temperature=0.3)
    recipes = {"speedrun": dict(toy_mode="fancy")}

    def __init__(self, encoder, cfg):
        super().__init__(encoder, cfg)
        self.projector = mlp(encoder.dim, cfg.proj_hidden, cfg.proj_dim)

    def forward(self, views, labels=None):
        z1, z2 = (self.projector(self.encoder(v)).float() for v in views[:2])
        seen = Path(self.cfg.out) / "toy_seen.txt"
        if not seen.exists():
            seen.write_text(f"{self.cfg.toy_scale} {self.cfg.toy_mode}")
        return {"loss": self.cfg.toy_scale * losses.ntxent_loss(z1, z2, self.cfg.temperature)}
'''

TINY = ["--width", "8", "--batch-size", "16", "--proj-hidden", "32", "--proj-dim", "16", "--knn-k", "10",
        "--device", "cpu", "--no-progress", "--no-linear-eval", "--epochs", "1", "--train-subset", "32",
        "--warmup-epochs", "0"]


def pretrain(plugins: Path, *args, timeout=600):
    env = {**os.environ, "FASTSSL_METHODS_PATH": str(plugins), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "pretrain.py"), *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def plugins(tmp_path):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "toy.py").write_text(TOY)
    return folder


def test_a_method_file_adds_its_options_to_help(plugins):
    r = pretrain(plugins, "--help")
    assert r.returncode == 0, r.stderr
    help_text = " ".join(r.stdout.split())  # argparse wraps lines
    assert "toy options:" in help_text and "toy, triplet" in help_text
    assert "--toy-scale TOY_SCALE Toy: factor on the NT-Xent loss (default: 0.5)" in help_text
    assert "--toy-mode {plain,fancy} Toy: a choice (default: plain)" in help_text


def test_a_method_file_trains_with_its_option(plugins, tiny_folder, tmp_path):
    out = tmp_path / "run"
    r = pretrain(plugins, "--method", "toy", "--toy-scale", "0.25", "--data", str(tiny_folder), "--out", str(out),
                 *TINY)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "toy_seen.txt").read_text() == "0.25 plain"  # the method read its option from the Config
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2
    cfg = summary["config"]
    assert (cfg["toy_scale"], cfg["toy_mode"], cfg["temperature"], cfg["method"]) == (0.25, "plain", 0.3, "toy")
    # its own --recipe speedrun replaces the global one (no progressive resolution for this method)
    r = pretrain(plugins, "--method", "toy", "--recipe", "speedrun", "--data", str(tiny_folder),
                 "--out", str(tmp_path / "run2"), *TINY)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "run2" / "toy_seen.txt").read_text() == "0.5 fancy"
    assert json.loads((tmp_path / "run2" / "summary.json").read_text())["config"]["res_schedule"] == ""


def test_a_method_file_may_not_shadow_a_builtin_one(tmp_path):
    (tmp_path / "simclr.py").write_text("raise AssertionError('never imported')\n")
    r = pretrain(tmp_path, "--help", timeout=300)
    assert r.returncode != 0 and "method files of the same name in two folders" in r.stderr and "simclr" in r.stderr


@pytest.mark.parametrize("bad", [["--toy-scale", "x"], ["--toy-scale", "-1"], ["--toy-mode", "odd"]])
def test_a_bad_method_option_is_one_line_and_exit_2(plugins, bad):
    r = pretrain(plugins, "--method", "toy", *bad, timeout=300)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "error:" in r.stderr and "--toy-" in r.stderr and "Traceback" not in r.stderr


def test_a_bad_builtin_option_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["--dare-lambda", "-0.5"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--dare-lambda" in err and "must be >= 0" in err


def test_methods_options_are_config_fields_with_their_defaults():
    cfg = resolve(parse_args(["--method", "simclr", "--device", "cpu"]))
    assert (cfg.dare_lambda, cfg.dare_variant, cfg.triplet_margin, cfg.triplet_mining, cfg.ema_base) == \
        (0.1, "decoupled", 0.2, "semihard", 0.99)
    owners = {name: method for name, (_, method) in methods.method_options().items()}
    assert owners["dare_lambda"] == "dare" and owners["triplet_mining"] == "triplet" and owners["ema_base"] == "byol"
    assert "dare_lambda" not in {o.name for o in config.GLOBAL_OPTIONS}


def test_config_round_trips_through_a_checkpoint_dict():
    cfg = resolve(parse_args(["--method", "dare", "--device", "cpu", "--dare-lambda", "0.3", "--local-scale", "0.1,0.2"]))
    saved = dataclasses.asdict(cfg)
    assert config.config_from_checkpoint(saved) == cfg and saved["dare_lambda"] == 0.3
    assert config.config_from_checkpoint({k: v for k, v in saved.items() if k != "ema_base"}).ema_base == 0.99
    with pytest.raises(ValueError, match="toy_scale.*method file"):
        config.config_from_checkpoint({**saved, "toy_scale": 0.25})


def test_datasets_come_from_data_prep():
    dataset = next(a for a in config.build_parser()._actions if a.dest == "dataset")
    assert tuple(dataset.choices) == dataset_names() == ("cifar10", "cifar100", "images")


def test_a_method_recipe_of_the_same_name_replaces_the_global_one(monkeypatch):
    monkeypatch.setattr(methods.get_method("simclr"), "recipes", {"speedrun": dict(temperature=0.3)})
    cfg = resolve(parse_args(["--method", "simclr", "--device", "cpu", "--recipe", "speedrun"]))
    assert cfg.temperature == 0.3 and cfg.res_schedule == ""
    cfg = resolve(parse_args(["--method", "dare", "--device", "cpu", "--recipe", "speedrun"]))
    assert cfg.res_schedule == "16,24,32" and cfg.temperature == 0.2  # other methods keep the global recipe


def test_fast_takes_the_method_fast_recipe_unless_a_recipe_is_named(monkeypatch):
    monkeypatch.setattr(methods.get_method("simclr"), "fast_recipe", "speedrun")
    monkeypatch.setattr(methods.get_method("dare"), "fast_recipe", "default")
    fast = ["--device", "cpu", "--fast"]
    cfg = resolve(parse_args(["--method", "simclr", *fast]))
    assert cfg.recipe == "speedrun" and cfg.res_schedule == "16,24,32"
    cfg = resolve(parse_args(["--method", "simclr", *fast, "--recipe", "default"]))
    assert cfg.recipe == "default" and cfg.res_schedule == ""
    cfg = resolve(parse_args(["--method", "simclr", *fast, "--res-schedule", "24,32"]))
    assert cfg.recipe == "speedrun" and cfg.res_schedule == "24,32"  # the command line still wins
    cfg = resolve(parse_args(["--method", "simclr", "--device", "cpu"]))
    assert cfg.recipe == "default" and cfg.res_schedule == ""  # without --fast: the default recipe
    cfg = resolve(parse_args(["--method", "dare", *fast]))
    assert cfg.recipe == "default" and cfg.res_schedule == ""


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made by a test vanish with it."""
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    monkeypatch.setattr(base, "_OPTIONS", dict(base._OPTIONS))


def test_an_option_declared_twice_with_another_type_is_refused(scratch_registry):
    @register("scratch_a")
    class A(Method):
        options = (Option("scratch_k", float, 1.0, "A's k"),)

    @register("scratch_b")  # the same declaration: shared
    class B(Method):
        options = (Option("scratch_k", float, 1.0, "B's k"),)

    with pytest.raises(ValueError, match="option 'scratch_k' of method 'scratch_c' .*differs from method 'scratch_a'"):
        @register("scratch_c")
        class C(Method):
            options = (Option("scratch_k", int, 1, "C's k"),)
    assert "scratch_c" not in methods.available()  # a refused method is not half-registered
    assert methods.method_options()["scratch_k"][0].type is float


def test_a_method_option_may_not_shadow_a_global_one(scratch_registry):
    @register("scratch_t")
    class T(Method):
        options = (Option("temperature", float, 0.5, "T's own temperature"),)

    with pytest.raises(ValueError, match="global option"):
        config._all_options()


def test_option_declarations_are_checked():
    with pytest.raises(ValueError, match="identifier"):
        Option("toy-scale", float, 0.5, "dash")
    with pytest.raises(ValueError, match="type must be"):
        Option("toy_list", list, [], "a list")


def test_the_config_line_shows_only_the_method_s_own_options(tmp_path, tiny_folder, capsys):
    from fastssl.cli import main
    assert main(["--method", "dare", "--data", str(tiny_folder), "--out", str(tmp_path / "r"), "--width", "8",
                 "--batch-size", "16", "--proj-hidden", "32", "--proj-dim", "16", "--knn-k", "10", "--epochs", "1",
                 "--device", "cpu", "--no-progress", "--no-linear-eval"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("config: "))
    assert "dare_lambda=" in line and "lr=" in line and "triplet_margin" not in line and "vicreg_sim" not in line
    saved = json.loads((tmp_path / "r" / "summary.json").read_text())["config"]
    assert "triplet_margin" in saved  # the run's record keeps every option
