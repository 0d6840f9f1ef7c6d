"""What a probe is: a measurement the training loop takes at named points, without naming it.

A probe is a `Probe` subclass in its own module and an entry of the `probes` config group
(`conf/probes/<name>.yaml`: `<name>: {_target_: <the class>, <its settings>}`); harness.probes
builds every entry with the model it measures (`Subject`). The loop calls each probe, in config
order, at these points:

1. after_backward(step, fp32_loss, lr): right after loss.backward() of the step with 0-based
   index `step`, before the optimiser step: the gradients are the step's;
2. plan(split, available), then at_evaluation(evaluation) if the plan is not None: after each
   validation (split "val") and after the final test (split "test");
3. tables(): before training and once it has ended: {artifact file name: CSV text}.

Metrics are returned as {name: 0-d device tensor}, logged at the hook's step; the metric buffer
reads them at its next flush, so a probe never makes a step wait for the device.
`check(node, image_size)` refuses a bad setting in one line before anything runs.
"""

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class Subject:
    """What the probes measure."""

    model: torch.nn.Module
    example: torch.Tensor  # a normalised input batch: the layers' forward order comes from it
    num_classes: int


@dataclass
class Evaluation:
    """A split being evaluated, for at_evaluation."""

    split: str  # "val" or "test"
    step: int
    x: torch.Tensor  # the split's uint8 images, on the device
    y: torch.Tensor
    normalise: Callable
    batch_size: int
    log: Callable  # log(step, {metric: value}): points at other steps than `step` (a curve's)
    autocast: Callable = nullcontext


class Probe:
    """Every hook does nothing unless a probe overrides it."""

    def __init__(self, subject: Subject):
        self.subject = subject

    @classmethod
    def check(cls, node, image_size: int | None) -> None:
        """Raise ConfigError naming the first bad setting of `node` (this probe's config)."""

    def after_backward(self, step: int, fp32_loss: Callable, lr: float) -> dict:
        """fp32_loss() -> the step's batch loss, recomputed in full precision."""
        return {}

    def plan(self, split: str, available: int) -> str | None:
        """What at_evaluation will do on a split of `available` images, for the progress line;
        None if nothing."""
        return None

    def at_evaluation(self, evaluation: Evaluation) -> dict:
        return {}

    def tables(self) -> dict:
        return {}
