"""Optimisers and learning-rate schedules.

An optimiser is any torch.optim class, bound to its settings by the `optim` config group
(`_target_`, `_partial_: true`); here it gets its parameter groups. Weight decay applies to
conv and linear weights only: BatchNorm's affine parameters, biases and Fixup's scalars are
exempt unless `decay_norm_and_bias` (decaying them only shrinks the scale BN is free to choose).

A schedule multiplies the base learning rate by a factor of the fraction of training done;
a new one is a subclass of Schedule and a YAML file in conf/schedule/.
"""

import inspect
import math

import torch


def build_optimizer(model: torch.nn.Module, factory, weight_decay: float,
                    decay_norm_and_bias: bool = False) -> torch.optim.Optimizer:
    """factory: an optimiser class with its settings bound (functools.partial)."""
    groups = param_groups(model, weight_decay, decay_norm_and_bias)
    # on a GPU, one fused kernel per step instead of several per parameter group: small nets
    # at batch 128 are bound by kernel launches
    optimizer_class = getattr(factory, "func", factory)
    fused = next(model.parameters()).is_cuda and "fused" in inspect.signature(optimizer_class).parameters
    return factory(groups, **({"fused": True} if fused else {}))


def param_groups(model, weight_decay, decay_norm_and_bias=False):
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim > 1 or decay_norm_and_bias else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


class Schedule:
    """The learning-rate factor as a function of training progress t in [0, 1), after a linear
    warm-up from 0 over the first `warmup` fraction of the steps."""

    def __init__(self, warmup: float = 0.0):
        self.warmup = warmup

    def shape(self, t: float) -> float:
        raise NotImplementedError

    def factor(self, step: int, total: int) -> float:
        """The multiplier of the base learning rate for the step with 0-based index `step`."""
        factor = self.shape(step / max(1, total))
        warmup_steps = round(self.warmup * total)
        if step < warmup_steps:
            factor *= (step + 1) / warmup_steps
        return factor


class Constant(Schedule):
    def shape(self, t):
        return 1.0


class Step(Schedule):
    """Divided by 1/gamma at each milestone (He et al.: at 32k and 48k of 64k iterations)."""

    def __init__(self, milestones=(0.5, 0.75), gamma: float = 0.1, warmup: float = 0.0):
        super().__init__(warmup)
        self.milestones, self.gamma = list(milestones), gamma

    def shape(self, t):
        return self.gamma ** sum(t >= m for m in self.milestones)


class Cosine(Schedule):
    def __init__(self, final: float = 0.0, warmup: float = 0.0):
        super().__init__(warmup)
        self.final = final

    def shape(self, t):
        return self.final + (1 - self.final) * 0.5 * (1 + math.cos(math.pi * t))


class OneCycle(Schedule):
    """Linear up from `start` to 1 at `peak`, then linear down to `final` (triangular one-cycle)."""

    def __init__(self, peak: float = 0.25, start: float = 0.04, final: float = 0.0, warmup: float = 0.0):
        super().__init__(warmup)
        self.peak, self.start, self.final = peak, start, final

    def shape(self, t):
        if t < self.peak:
            return self.start + (1 - self.start) * t / self.peak
        return self.final + (1 - self.final) * (1 - t) / (1 - self.peak)


def build_scheduler(optimizer, total_steps: int, schedule: Schedule):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule.factor(step, total_steps))
