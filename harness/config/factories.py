"""Objects from a validated config: the dataset, the model, the optimiser and the schedule.

Their nodes carry `_target_` and are built with `hydra.utils.instantiate`: a new optimiser
from torch.optim is one YAML file in conf/optim/; a new model family is one module (see
harness.models) and one YAML file in conf/model/.
"""

import json
import sys

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from harness import contract
from harness.errors import ConfigError


def load_data(cfg_data):
    """The `data` group's dataset, read and split (harness.data.Splits)."""
    return instantiate(cfg_data, _convert_="all").load()


def make_model(cfg_model, num_classes: int, in_channels: int = 3) -> torch.nn.Module:
    """The `model` group's network; a constructor's complaint about its arguments is one line."""
    try:
        return instantiate(cfg_model, _convert_="all", num_classes=num_classes, in_channels=in_channels)
    except InstantiationException as e:
        cause = e.__cause__ or e
        raise ConfigError(f"model ({cfg_model._target_}): {str(cause).splitlines()[0]}") from None


def make_schedule(cfg_schedule):
    return instantiate(cfg_schedule, _convert_="all")


def optimizer_factory(cfg_optim):
    """The optimiser class with the config's settings bound: call it with parameter groups."""
    settings = OmegaConf.to_container(cfg_optim, resolve=True)
    settings.pop("decay_norm_and_bias", None)
    return instantiate(settings, _convert_="all")


def locate(node):
    """What a node's `_target_` names (a class or function); ConfigError if it cannot be imported."""
    from hydra._internal.utils import _locate

    try:
        return _locate(node._target_)
    except ImportError as e:
        raise ConfigError(f"{node._get_full_key('_target_')}={node._target_!r} cannot be imported: {e}") from None


def model_family(cfg_model):
    """The module of the model's builder: it declares the family's LABELS (and may hold its
    range rules as `check(cfg_model)`)."""
    family = sys.modules[locate(cfg_model).__module__]
    if not isinstance(getattr(family, "LABELS", None), dict):
        raise ConfigError(f"{cfg_model._get_full_key('_target_')}={cfg_model._target_!r}: its module "
                          f"{family.__name__} declares no LABELS (its axes' words, as harness.contract.RESNET_LABELS)")
    return family


def model_labels(cfg_model) -> dict:
    """The job's model_labels tag: its family's LABELS as JSON; no tag where the family cannot be
    found: the job fails on that (validate), and its run is still recorded."""
    try:
        return {contract.MODEL_LABELS: json.dumps(model_family(cfg_model).LABELS)}
    except ConfigError:
        return {}
