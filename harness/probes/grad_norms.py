"""Per-layer gradient norms, weight norms and relative update sizes, computed on the device.

A layer is every module with weights (each conv, each linear, each BatchNorm's affine pair),
in forward order; its norm is over all of its own parameters. Norms come from fused
`torch._foreach_norm` calls and stay on the device until the metric buffer is flushed.
"""

import csv
import io

import torch


class GradNorms:
    def __init__(self, model, every: int, dense: int):
        self.every, self.dense = every, dense
        self.layers = model.layers()
        self.names = [f"{i:03d}_{name}" for i, (name, _) in enumerate(self.layers)]
        self.params = [p for _, m in self.layers for p in m.parameters(recurse=False)]
        device = self.params[0].device
        self.layer_of_param = torch.tensor(
            [i for i, (_, m) in enumerate(self.layers) for _ in m.parameters(recurse=False)], device=device)
        self.all_params = list(model.parameters())  # the total also counts parameters outside layers
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
        total = torch.stack(torch._foreach_norm([p.grad for p in self.all_params if p.grad is not None])).norm()
        self.weights_before = torch._foreach_mul([p.detach() for p in self.params], 1.0)  # a copy
        metrics = {f"grad_norm/{name}": norms[i] for i, name in enumerate(self.names)}
        metrics["grad_norm/total"] = total
        return metrics

    @torch.no_grad()
    def after_step(self, step: int) -> dict:
        if self.weights_before is None:
            return {}
        before, self.weights_before = self.weights_before, None
        change = self._per_layer(torch._foreach_sub([p.detach() for p in self.params], before))
        weight = self._per_layer(before)
        ratio = change / weight.clamp_min(1e-12)
        metrics = {f"weight_norm/{name}": weight[i] for i, name in enumerate(self.names)}
        metrics.update({f"update_ratio/{name}": ratio[i] for i, name in enumerate(self.names)})
        return metrics

    def layer_table(self) -> str:
        """CSV: index, metric suffix, layer name, stage, block, module type, parameter count."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["index", "metric", "layer", "stage", "block", "module", "parameters"])
        for i, ((name, module), metric) in enumerate(zip(self.layers, self.names)):
            parts = name.split(".")
            stage = int(parts[0][5:]) if parts[0].startswith("stage") else (0 if parts[0] == "stem" else 4)
            block = int(parts[1][5:]) if len(parts) > 1 and parts[1].startswith("block") else ""
            writer.writerow([i, metric, name, stage, block, type(module).__name__,
                             sum(p.numel() for p in module.parameters(recurse=False))])
        return out.getvalue()
