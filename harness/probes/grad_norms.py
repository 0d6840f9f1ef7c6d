"""Per-layer gradient norms, weight norms and relative update sizes, computed on the device.

A layer is every module with parameters of its own (each conv, each linear, each BatchNorm's
affine pair, a block's own scalars), in the order a forward pass first calls it, found from
the module tree with hooks: a module a model adds shows up without any list to keep. Its
norm is over all of its own parameters. Norms come from fused `torch._foreach_norm` calls
and stay on the device until the metric buffer is flushed.
"""

import csv
import io

import torch

from harness import contract


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


class GradNorms:
    def __init__(self, model, example: torch.Tensor, every: int, dense: int):
        self.every, self.dense = every, dense
        self.layers = layers_in_forward_order(model, example)
        self.names = [f"{i:03d}_{name}" for i, (name, _) in enumerate(self.layers)]
        self.params = [p for _, m in self.layers for p in m.parameters(recurse=False)]
        self.layer_of_param = torch.tensor(
            [i for i, (_, m) in enumerate(self.layers) for _ in m.parameters(recurse=False)],
            device=self.params[0].device)
        self.weights_before = None

    def due(self, step: int) -> bool:
        """Step 0 (the initialisation), every step of the first `dense`, then every `every`."""
        return self.every > 0 and (step < self.dense or step % self.every == 0)

    def _per_layer(self, tensors) -> torch.Tensor:
        squares = torch.stack(torch._foreach_norm(tensors)).square()
        per_layer = torch.zeros(len(self.layers), device=squares.device).index_add_(0, self.layer_of_param, squares)
        return per_layer.sqrt()

    @torch.no_grad()
    def after_backward(self, step: int) -> dict:
        if not self.due(step):
            return {}
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        norms = self._per_layer(grads)
        self.weights_before = torch._foreach_mul([p.detach() for p in self.params], 1.0)  # a copy
        metrics = {contract.GRAD_NORM + name: norms[i] for i, name in enumerate(self.names)}
        metrics[contract.GRAD_NORM_TOTAL] = norms.square().sum().sqrt()  # every parameter belongs to one layer
        return metrics

    @torch.no_grad()
    def after_step(self, step: int) -> dict:
        if self.weights_before is None:
            return {}
        before, self.weights_before = self.weights_before, None
        change = self._per_layer(torch._foreach_sub([p.detach() for p in self.params], before))
        weight = self._per_layer(before)
        ratio = change / weight.clamp_min(1e-12)
        metrics = {contract.WEIGHT_NORM + name: weight[i] for i, name in enumerate(self.names)}
        metrics.update({contract.UPDATE_RATIO + name: ratio[i] for i, name in enumerate(self.names)})
        return metrics

    def layer_table(self) -> str:
        """CSV: index, metric suffix, module path, module type, parameter count."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["index", "metric", "layer", "module", "parameters"])
        for i, ((name, module), metric) in enumerate(zip(self.layers, self.names)):
            writer.writerow([i, metric, name, type(module).__name__,
                             sum(p.numel() for p in module.parameters(recurse=False))])
        return out.getvalue()
