"""Per-layer gradient norms, computed on the device.

A layer is every module with parameters of its own (each conv, each linear, each BatchNorm's
affine pair, a block's own scalars), in the order a forward pass first calls it, found from
the module tree with hooks: a module a model adds shows up without any list to keep. Its
norm is over all of its own parameters. Norms come from fused `torch._foreach_norm` calls
and stay on the device until the metric buffer is flushed.
"""

import csv
import io
from dataclasses import dataclass

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from harness import contract
from harness.probes.base import Probe, Subject


@dataclass
class GradNormsProbeConfig:
    _target_: str = MISSING
    every: int = 50  # steps between points (0: off) ...
    dense: int = 20  # ... after a point at every one of the first `dense` steps


ConfigStore.instance().store(group="schema/probes", name="grad_norms", node=GradNormsProbeConfig)


def layers_in_forward_order(model: torch.nn.Module, example: torch.Tensor) -> list:
    """[(module path, module)] of every module with parameters of its own, in the order a forward
    pass over `example` first calls it (modules it never calls come last, in tree order).
    The pass runs in eval mode without gradients, so BatchNorm statistics stay as they were."""
    owners = [(name or "model", m) for name, m in model.named_modules() if any(True for _ in m.parameters(False))]
    order = {}

    def first_call(module, args):  # returns None: a pre-hook's return value would replace the input
        order.setdefault(id(module), len(order))

    hooks = [m.register_forward_pre_hook(first_call) for _, m in owners]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return sorted(owners, key=lambda item: order.get(id(item[1]), len(owners)))


class GradNorms(Probe):
    def __init__(self, subject: Subject, every: int, dense: int):
        super().__init__(subject)
        self.every, self.dense = every, dense
        self.layers = layers_in_forward_order(subject.model, subject.example)
        self.names = [f"{i:03d}_{name}" for i, (name, _) in enumerate(self.layers)]
        self.params = [p for _, m in self.layers for p in m.parameters(recurse=False)]
        self.layer_of_param = torch.tensor(
            [i for i, (_, m) in enumerate(self.layers) for _ in m.parameters(recurse=False)],
            device=self.params[0].device)

    @classmethod
    def check(cls, node, image_size):
        from harness.config.rules import at_least  # late: harness.config imports the probes

        for key in ("every", "dense"):
            at_least(node, key, 0)

    def due(self, step: int) -> bool:
        """Step 0 (the initialisation), every step of the first `dense`, then every `every`."""
        return self.every > 0 and (step < self.dense or step % self.every == 0)

    def _per_layer(self, tensors) -> torch.Tensor:
        squares = torch.stack(torch._foreach_norm(tensors)).square()
        per_layer = torch.zeros(len(self.layers), device=squares.device).index_add_(0, self.layer_of_param, squares)
        return per_layer.sqrt()

    @torch.no_grad()
    def after_backward(self, step, fp32_loss=None, lr=None) -> dict:
        if not self.due(step):
            return {}
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        norms = self._per_layer(grads)
        metrics = {contract.GRAD_NORM + name: norms[i] for i, name in enumerate(self.names)}
        metrics[contract.GRAD_NORM_TOTAL] = norms.square().sum().sqrt()  # every parameter belongs to one layer
        return metrics

    def tables(self) -> dict:
        return {contract.LAYER_TABLE: self.layer_table()}

    def layer_table(self) -> str:
        """CSV: index, metric suffix, module path, module type, parameter count."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["index", "metric", "layer", "module", "parameters"])
        for i, ((name, module), metric) in enumerate(zip(self.layers, self.names)):
            writer.writerow([i, metric, name, type(module).__name__,
                             sum(p.numel() for p in module.parameters(recurse=False))])
        return out.getvalue()
