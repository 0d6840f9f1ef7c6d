import math

import pytest
import torch
from omegaconf import OmegaConf

from harness.errors import ConfigError
from harness.models import CifarResNet
from harness.optim import build_optimizer, build_scheduler, lr_factor

OPTIM_DEFAULTS = {"lr": 0.1, "weight_decay": 5e-4, "momentum": 0.9, "alpha": 0.99, "eps": 1e-8,
                  "betas": [0.9, 0.999], "decay_norm_and_bias": False}


def optim_cfg(name, **overrides):
    return OmegaConf.create({"name": name, **OPTIM_DEFAULTS, **overrides})


def schedule(name, **kw):
    return OmegaConf.create({"name": name, "warmup": 0.0, **kw})


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("momentum", torch.optim.SGD),
                                       ("nesterov", torch.optim.SGD), ("rmsprop", torch.optim.RMSprop),
                                       ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_each_optimizer_builds_with_its_settings(name, cls):
    opt = build_optimizer(CifarResNet(8), optim_cfg(name))
    assert type(opt) is cls
    group = opt.param_groups[0]
    if cls is torch.optim.SGD:
        assert group["momentum"] == (0.0 if name == "sgd" else 0.9)
        assert group["nesterov"] == (name == "nesterov")


def test_no_weight_decay_on_batchnorm_and_biases():
    model = CifarResNet(8)
    decay, no_decay = build_optimizer(model, optim_cfg("momentum")).param_groups
    bn_and_bias = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()}
    bn_and_bias.add(id(model.fc.bias))
    assert {id(p) for p in no_decay["params"]} == bn_and_bias and no_decay["weight_decay"] == 0
    assert decay["weight_decay"] == 5e-4 and id(model.fc.weight) in {id(p) for p in decay["params"]}
    everything = build_optimizer(model, optim_cfg("momentum", decay_norm_and_bias=True)).param_groups
    assert len(everything[0]["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize("bad, match", [({"name": "foo"}, "optim.name='foo' is not one of sgd"),
                                        ({"lr": -1}, "optim.lr=-1"), ({"lr": 0}, "optim.lr=0"),
                                        ({"lr": float("nan")}, "optim.lr=nan"),
                                        ({"weight_decay": -0.1}, "optim.weight_decay=-0.1")])
def test_bad_optimizer_settings(bad, match):
    cfg = optim_cfg(bad.pop("name", "momentum"), **bad)
    with pytest.raises(ConfigError, match=match):
        build_optimizer(CifarResNet(8), cfg)


def test_schedules_at_known_points():
    total = 1000
    assert lr_factor(999, total, schedule("constant")) == 1.0
    step = schedule("step", milestones=[0.5, 0.75], gamma=0.1)
    assert [lr_factor(s, total, step) for s in (0, 499, 500, 749, 750)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    cos = schedule("cosine", final=0.0)
    assert lr_factor(0, total, cos) == 1.0
    assert lr_factor(500, total, cos) == pytest.approx(0.5)
    assert lr_factor(250, total, cos) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    one = schedule("onecycle", peak=0.25, start=0.04, final=0.0)
    assert lr_factor(0, total, one) == pytest.approx(0.04)
    assert lr_factor(250, total, one) == pytest.approx(1.0)
    assert lr_factor(625, total, one) == pytest.approx(0.5)
    warm = schedule("constant", warmup=0.1)
    assert [lr_factor(s, total, warm) for s in (0, 49, 99, 100)] == pytest.approx([0.01, 0.5, 1.0, 1.0])


def test_scheduler_drives_the_optimizer_lr():
    model = CifarResNet(8)
    opt = build_optimizer(model, optim_cfg("momentum", lr=0.2))
    sched = build_scheduler(opt, 4, schedule("step", milestones=[0.5], gamma=0.5))
    seen = []
    for _ in range(4):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.2, 0.2, 0.1, 0.1])
    with pytest.raises(ConfigError, match="schedule.name='wavy'"):
        build_scheduler(opt, 4, schedule("wavy"))
    with pytest.raises(ConfigError, match="schedule.warmup=1.5"):
        build_scheduler(opt, 4, schedule("constant", warmup=1.5))
