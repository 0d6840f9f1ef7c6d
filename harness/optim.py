"""Optimisers and learning-rate schedules, from the `optim` and `schedule` config groups.

Weight decay applies to conv and linear weights only: BatchNorm's affine parameters,
biases and Fixup's scalars are exempt unless `optim.decay_norm_and_bias=true`
(decaying them only shrinks the scale BN is free to choose).
"""

import math

import torch

from harness.errors import ConfigError

OPTIMIZERS = ("sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine", "onecycle")


def build_optimizer(model: torch.nn.Module, cfg_optim) -> torch.optim.Optimizer:
    name = cfg_optim.name
    if name not in OPTIMIZERS:
        raise ConfigError(f"optim.name={name!r} is not one of {', '.join(OPTIMIZERS)}")
    lr, wd = cfg_optim.lr, cfg_optim.weight_decay
    if not _is_number(lr) or not lr > 0:
        raise ConfigError(f"optim.lr={lr!r} must be a positive number")
    if not _is_number(wd) or wd < 0:
        raise ConfigError(f"optim.weight_decay={wd!r} must be a number >= 0")
    groups = param_groups(model, wd, cfg_optim.get("decay_norm_and_bias", False))
    # on a GPU, one fused kernel per step instead of several per parameter group: small nets
    # at batch 128 are bound by kernel launches
    fused = {"fused": True} if next(model.parameters()).is_cuda else {}
    if name in ("sgd", "momentum", "nesterov"):
        momentum = 0.0 if name == "sgd" else cfg_optim.momentum
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=name == "nesterov", **fused)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, alpha=cfg_optim.alpha, eps=cfg_optim.eps,
                                   momentum=cfg_optim.momentum)
    adam = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    return adam(groups, lr=lr, betas=tuple(cfg_optim.betas), eps=cfg_optim.eps, **fused)


def param_groups(model, weight_decay, decay_norm_and_bias=False):
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim > 1 or decay_norm_and_bias else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def lr_factor(step: int, total: int, cfg_schedule) -> float:
    """The multiplier of the base learning rate for the step with 0-based index `step`."""
    t = step / max(1, total)  # fraction of training done
    name = cfg_schedule.name
    if name == "constant":
        factor = 1.0
    elif name == "step":
        factor = cfg_schedule.gamma ** sum(t >= m for m in cfg_schedule.milestones)
    elif name == "cosine":
        final = cfg_schedule.final
        factor = final + (1 - final) * 0.5 * (1 + math.cos(math.pi * t))
    elif name == "onecycle":
        # linear up from `start` to 1 at `peak`, then linear down to `final` (triangular one-cycle)
        peak, start, final = cfg_schedule.peak, cfg_schedule.start, cfg_schedule.final
        factor = start + (1 - start) * t / peak if t < peak else final + (1 - final) * (1 - t) / (1 - peak)
    else:
        raise ConfigError(f"schedule.name={name!r} is not one of {', '.join(SCHEDULES)}")
    warmup_steps = round(cfg_schedule.warmup * total)
    if step < warmup_steps:
        factor *= (step + 1) / warmup_steps
    return factor


def build_scheduler(optimizer, total_steps: int, cfg_schedule):
    warmup = cfg_schedule.warmup
    if not _is_number(warmup) or not 0 <= warmup < 1:
        raise ConfigError(f"schedule.warmup={warmup!r} must be a fraction of training in [0, 1)")
    if cfg_schedule.name == "onecycle" and not 0 < cfg_schedule.peak < 1:
        raise ConfigError(f"schedule.peak={cfg_schedule.peak!r} must be in (0, 1)")
    lr_factor(0, total_steps, cfg_schedule)  # raise now on an unknown schedule, not at step 1
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, cfg_schedule))
