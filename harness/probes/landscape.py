"""Loss-landscape smoothness along the gradient (Santurkar et al. 2018, section 3.2).

At the current weights w, on the current batch: the gradient g, then for each step size eta
the loss L(w - eta g) and its gradient g_eta. Logged: the range of those losses (loss
variation) and max ||g - g_eta|| (gradient predictiveness).

Every pass of the probe runs in fp32, without autocast or TF32, whatever the training
precision: a step of a fraction of the learning rate moves most weights by less than bf16
(or TF32) can resolve, so under autocast the probe would measure rounding, not the landscape.
So g is recomputed in fp32 at w. Weights, gradients, BatchNorm buffers and RNG state are put
back exactly, so training continues as if the probe had not run.
"""

import contextlib
import math
from dataclasses import dataclass, field
from typing import List

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from harness import contract
from harness.probes.base import Probe, Subject


@dataclass
class LandscapeProbeConfig:
    _target_: str = MISSING
    every: int = 0
    etas: List[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0])


ConfigStore.instance().store(group="schema/probes", name="landscape", node=LandscapeProbeConfig)


class Landscape(Probe):
    """landscape_probe every `every` steps (0: never), at step sizes `etas` times the learning rate."""

    def __init__(self, subject: Subject, every: int, etas: list):
        super().__init__(subject)
        self.every, self.etas = every, etas

    @classmethod
    def check(cls, node, image_size):
        from harness.config.rules import at_least, fail  # late: harness.config imports the probes

        at_least(node, "every", 0)
        if not node.etas or not all(math.isfinite(e) and e >= 0 for e in node.etas):
            fail(node, "etas", "must be a non-empty list of numbers >= 0 (multiples of the learning rate)")

    def after_backward(self, step, fp32_loss, lr) -> dict:
        if not self.every or step % self.every:
            return {}
        return landscape_probe(self.subject.model, fp32_loss, [m * lr for m in self.etas])


@contextlib.contextmanager
def full_precision(device: torch.device):
    """fp32 arithmetic throughout: autocast off, TF32 off (restored afterwards)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.autocast(device.type, enabled=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@torch.no_grad()
def _global_norm(tensors) -> torch.Tensor:
    return torch.stack(torch._foreach_norm(tensors)).norm()


def _gradient(params, loss_fn):
    for p in params:
        p.grad = None
    loss = loss_fn()
    loss.backward()
    return loss.detach().float(), [p.grad for p in params]


def landscape_probe(model, loss_fn, etas) -> dict:
    """loss_fn() -> scalar loss of the current batch (in fp32); call after backward, before
    optimizer.step."""
    params = [p for p in model.parameters() if p.grad is not None]
    with torch.no_grad():
        weights = torch._foreach_mul([p.detach() for p in params], 1.0)
        training_grads = torch._foreach_mul([p.grad for p in params], 1.0)
        buffers = [b.clone() for b in model.buffers()]
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None

    losses, differences = [], []
    try:
        with full_precision(params[0].device):
            _, grads = _gradient(params, loss_fn)
            for eta in etas:
                with torch.no_grad():
                    torch._foreach_add_([p.detach() for p in params], grads, alpha=-eta)
                loss, moved = _gradient(params, loss_fn)
                with torch.no_grad():
                    difference = _global_norm(torch._foreach_sub(moved, grads))
                    torch._foreach_copy_([p.detach() for p in params], weights)
                losses.append(loss)
                differences.append(difference)
    finally:
        with torch.no_grad():
            torch._foreach_copy_([p.detach() for p in params], weights)
            for p, g in zip(params, training_grads):
                p.grad = g
            for b, saved in zip(model.buffers(), buffers):
                b.copy_(saved)
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    losses = torch.stack(losses)
    return {contract.LANDSCAPE_LOSS_VARIATION: losses.max() - losses.min(),
            contract.LANDSCAPE_GRAD_PREDICTIVENESS: torch.stack(differences).max()}
