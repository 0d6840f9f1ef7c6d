"""A probe that lives only in the tests: per-layer activation statistics, added to a run on
the command line (`+probes.activation_stats._target_=tests.probe_example.ActivationStats`)
with no edit to harness/. It is the whole recipe for a new probe but the YAML file."""

import csv
import io

from torch import nn

from harness.probes import Probe, Subject

METRIC = "activation_std/"  # + NNN_<conv>: the standard deviation of the conv's output
TABLE = "activation_layers.csv"  # index, metric, layer


class ActivationStats(Probe):
    def __init__(self, subject: Subject, every: int = 1):
        super().__init__(subject)
        self.every = every
        self.convs = [(name, m) for name, m in subject.model.named_modules() if isinstance(m, nn.Conv2d)]
        self.names = [f"{i:03d}_{name}" for i, (name, _) in enumerate(self.convs)]
        self.outputs = {}  # conv index: its output in the last forward pass (kept for backward anyway)
        for i, (_, conv) in enumerate(self.convs):
            conv.register_forward_hook(lambda module, args, output, i=i: self.outputs.__setitem__(i, output))

    @classmethod
    def check(cls, node, image_size):
        from harness.errors import ConfigError

        if node.get("every", 1) < 1:
            raise ConfigError(f"probes.activation_stats.every={node.every} must be a positive number of steps")

    def after_backward(self, step, fp32_loss, lr) -> dict:
        if step % self.every:
            return {}
        return {METRIC + name: self.outputs[i].detach().float().std() for i, name in enumerate(self.names)}

    def tables(self) -> dict:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["index", "metric", "layer"])
        writer.writerows([i, metric, name] for i, (metric, (name, _)) in enumerate(zip(self.names, self.convs)))
        return {TABLE: out.getvalue()}
