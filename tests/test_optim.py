"""Optimisers from their YAML files, weight-decay groups, schedules at known points."""

import math
import sys

import pytest
import torch

from harness.app import main
from harness.config import make_schedule, optimizer_factory, validate
from harness.models.resnet import CifarResNet
from harness.training.optim import Constant, Cosine, OneCycle, Step, build_optimizer, build_scheduler

from conftest import PROJECT_ROOT, all_runs, compose_config, run_cli

OPTIMIZER_FILES = sorted(p.stem for p in (PROJECT_ROOT / "conf" / "optim").glob("*.yaml"))
# what some shipped optimiser files must build: class, lr, momentum / nesterov where SGD
EXPECTED = {"sgd": (torch.optim.SGD, 0.1, 0.0, False), "momentum": (torch.optim.SGD, 0.1, 0.9, False),
            "nesterov": (torch.optim.SGD, 0.1, 0.9, True), "he2016": (torch.optim.SGD, 0.1, 0.9, False),
            "fast": (torch.optim.SGD, 0.2, 0.9, True), "rmsprop": (torch.optim.RMSprop, 1e-3, 0.0, None),
            "adam": (torch.optim.Adam, 1e-3, None, None), "adamw": (torch.optim.AdamW, 1e-3, None, None)}


@pytest.mark.parametrize("choice", OPTIMIZER_FILES)
def test_every_optimizer_file_builds_and_takes_a_step(choice):
    """A new file in conf/optim/ is tested here without touching this file."""
    cfg = compose_config(f"optim={choice}").optim
    model = CifarResNet(8)
    opt = build_optimizer(model, optimizer_factory(cfg), cfg.weight_decay, cfg.decay_norm_and_bias)
    first = next(model.parameters())
    before = first.detach().clone()
    model(torch.randn(4, 3, 32, 32)).square().mean().backward()
    opt.step()
    assert type(opt).__module__.startswith("torch.optim") and not torch.equal(first, before)


@pytest.mark.parametrize("choice", sorted(EXPECTED))
def test_each_optimizer_file_builds_its_class_with_its_settings(choice):
    cls, lr, momentum, nesterov = EXPECTED[choice]
    cfg = compose_config(f"optim={choice}").optim
    opt = build_optimizer(CifarResNet(8), optimizer_factory(cfg), cfg.weight_decay, cfg.decay_norm_and_bias)
    assert type(opt) is cls and opt.param_groups[0]["lr"] == lr
    if momentum is not None:
        assert opt.param_groups[0]["momentum"] == momentum
    if nesterov is not None:
        assert opt.param_groups[0]["nesterov"] == nesterov


def test_no_weight_decay_on_batchnorm_and_biases():
    model = CifarResNet(8)
    factory = optimizer_factory(compose_config("optim=momentum").optim)
    decay, no_decay = build_optimizer(model, factory, 5e-4).param_groups
    bn_and_bias = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()}
    bn_and_bias.add(id(model.fc.bias))
    assert {id(p) for p in no_decay["params"]} == bn_and_bias and no_decay["weight_decay"] == 0
    assert decay["weight_decay"] == 5e-4 and id(model.fc.weight) in {id(p) for p in decay["params"]}
    everything = build_optimizer(model, factory, 5e-4, decay_norm_and_bias=True).param_groups
    assert len(everything[0]["params"]) == len(list(model.parameters()))


def test_schedules_at_known_points():
    total = 1000
    assert Constant().factor(999, total) == 1.0
    step = Step(milestones=[0.5, 0.75], gamma=0.1)
    assert [step.factor(s, total) for s in (0, 499, 500, 749, 750)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    cos = Cosine(final=0.0)
    assert cos.factor(0, total) == 1.0
    assert cos.factor(500, total) == pytest.approx(0.5)
    assert cos.factor(250, total) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    one = OneCycle(peak=0.25, start=0.04, final=0.0)
    assert one.factor(0, total) == pytest.approx(0.04)
    assert one.factor(250, total) == pytest.approx(1.0)
    assert one.factor(625, total) == pytest.approx(0.5)
    warm = Constant(warmup=0.1)
    assert [warm.factor(s, total) for s in (0, 49, 99, 100)] == pytest.approx([0.01, 0.5, 1.0, 1.0])


def test_schedule_files_build_their_schedules():
    assert type(make_schedule(compose_config("schedule=onecycle").schedule)) is OneCycle
    cosine = make_schedule(compose_config("schedule=cosine", "schedule.final=0.1").schedule)
    assert type(cosine) is Cosine and cosine.factor(999_999, 1_000_000) == pytest.approx(0.1)


def test_scheduler_drives_the_optimizer_lr():
    model = CifarResNet(8)
    opt = build_optimizer(model, optimizer_factory(compose_config("optim=momentum", "optim.lr=0.2").optim), 0.0)
    sched = build_scheduler(opt, 4, Step(milestones=[0.5], gamma=0.5))
    seen = []
    for _ in range(4):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.2, 0.2, 0.1, 0.1])


def test_a_new_optimizer_is_one_yaml_file(runs_dir, tmp_path):
    """torch.optim.Adagrad, in a config folder of the user's own, swept beside a shipped one."""
    (tmp_path / "conf" / "optim").mkdir(parents=True)
    (tmp_path / "conf" / "optim" / "adagrad.yaml").write_text(
        "_target_: torch.optim.Adagrad\n_partial_: true\nlr: 0.05\nlr_decay: 0.001\nweight_decay: 1e-4\n")
    result = run_cli("-m", "optim=adagrad,sgd", "data=synthetic", "trainer=smoke", "model.depth=8",
                     f"hydra.searchpath=[file://{tmp_path / 'conf'}]", runs_dir=runs_dir)
    assert result.returncode == 0, result.stderr
    _, runs = all_runs(f"sqlite:///{runs_dir}/mlflow.db")
    jobs = {r.data.tags["choice.optim"]: r for r in runs if "job_num" in r.data.tags}
    assert set(jobs) == {"adagrad", "sgd"} and all(r.info.status == "FINISHED" for r in jobs.values())
    assert jobs["adagrad"].data.params["optim._target_"] == "torch.optim.Adagrad"
    assert jobs["adagrad"].data.params["optim.lr_decay"] == "0.001"


NADAM_YAML = ("defaults:\n  - /schema/optim/any@_here_\n  - _self_\n"
              "_target_: torch.optim.NAdam\nlr: 2e-3\nmomentum_decay: 4e-3\nweight_decay: 1e-4\n")


def test_an_optimizer_without_a_schema_extends_the_settings_every_optimizer_has(tmp_path):
    (tmp_path / "conf" / "optim").mkdir(parents=True)
    (tmp_path / "conf" / "optim" / "nadam.yaml").write_text(NADAM_YAML)
    cfg = compose_config(f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "optim=nadam")
    validate(cfg)
    opt = build_optimizer(CifarResNet(8), optimizer_factory(cfg.optim), cfg.optim.weight_decay,
                          cfg.optim.decay_norm_and_bias)
    assert type(opt) is torch.optim.NAdam and opt.param_groups[0]["momentum_decay"] == 4e-3
    assert opt.param_groups[0]["lr"] == 2e-3 and opt.param_groups[0]["weight_decay"] == 1e-4


@pytest.mark.parametrize("override, says", [
    ("optim.lr=abc", "optim.lr='abc' must be a positive number"),
    ("optim.weight_decay=abc", "optim.weight_decay='abc' must be at least 0"),
    ("optim.momentum_decay=abc", "is refused by torch.optim.NAdam"),
])
def test_a_bad_value_of_an_optimizer_without_a_schema_is_one_line(override, says, monkeypatch, capsys, tmp_path):
    (tmp_path / "conf" / "optim").mkdir(parents=True)
    (tmp_path / "conf" / "optim" / "nadam.yaml").write_text(NADAM_YAML)
    monkeypatch.setattr(sys, "argv", ["harness", f"hydra.searchpath=[file://{tmp_path}/conf]", "optim=nadam",
                                      override, f"paths.runs={tmp_path}/runs"])
    with pytest.raises(SystemExit) as exit_status:
        main()
    assert exit_status.value.code == 2 and not (tmp_path / "runs").exists()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], lines
