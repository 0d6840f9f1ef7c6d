"""Measurements taken during training: one module each, one `probes` config entry each.

- grad_norms.py: per-layer gradient norms, after backward;
- landscape.py: the loss landscape along the gradient, after backward, when due;
- shift.py, invariance.py: invariance scores, to shifts and to rotation, scale and
  illumination, on a fixed, class-stratified sample of a split, at each evaluation.

base.py says what a probe is and when the loop calls it. Every module here is imported, so
the schema a probe module registers (/schema/probes/<module>) is there for its YAML file.
"""

import importlib
import pkgutil

from hydra.utils import instantiate
from omegaconf import OmegaConf

from harness.errors import ConfigError
from harness.probes.base import Evaluation, Probe, Subject
from harness.probes.grad_norms import GradNorms
from harness.probes.landscape import landscape_probe
from harness.probes.shift import shift_scores

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


class Probes:
    """Every probe of the `probes` config, built for the model, called in config order."""

    def __init__(self, cfg_probes, model, example, num_classes: int):
        """example: a normalised input batch, to find the layers in forward order."""
        subject = Subject(model, example, num_classes)
        self.probes = [instantiate(node, _partial_=True, _convert_="all")(subject) for node in cfg_probes.values()]
        self.handed_out = {}  # table name: the text tables() last returned

    def after_backward(self, step: int, fp32_loss, lr: float) -> dict:
        metrics = {}
        for probe in self.probes:
            metrics.update(probe.after_backward(step, fp32_loss, lr))
        return metrics

    def plans(self, split: str, available: int) -> list:
        """[(probe, what its at_evaluation will do)] of the probes with something to do on the split."""
        return [(probe, plan) for probe in self.probes if (plan := probe.plan(split, available))]

    def tables(self) -> dict:
        """{artifact name: CSV text} of each table that is new or changed since the last call."""
        tables = {}
        for probe in self.probes:
            tables.update(probe.tables())
        new = {name: text for name, text in tables.items() if self.handed_out.get(name) != text}
        self.handed_out.update(new)
        return new


def check_probes(cfg_probes, image_size: int | None) -> None:
    """Raise ConfigError naming the first entry that is not a probe, or a probe's bad setting."""
    from harness.config.factories import locate  # late: harness.config imports this package
    from harness.config.rules import check_known_keys

    for name, node in cfg_probes.items():
        probe = locate(node) if OmegaConf.is_dict(node) and "_target_" in node else None
        if not (isinstance(probe, type) and issubclass(probe, Probe)):
            raise ConfigError(f"probes.{name} is not a probe: give it a _target_ that names a "
                              "harness.probes.base.Probe subclass")
        check_known_keys(node)
        probe.check(node, image_size)


__all__ = ["Evaluation", "GradNorms", "Probe", "Probes", "Subject", "check_probes", "landscape_probe", "shift_scores"]
