"""The config schema: one dataclass per config group, registered in Hydra's ConfigStore.

Each group's YAML extends its schema (`defaults: [/schema/<group>/<name>@_here_, _self_]`),
so OmegaConf checks types while Hydra composes the config: `model.batchnorm=no` is False,
`model.batchnorm=maybe` and `model.width=abc` are refused. `validate(cfg)` checks what types
cannot say (6n+2 depths, ranges, sizes against the image). `one_line(error)` turns Hydra's
and OmegaConf's composition errors into the harness's one-line form.

Model, data, optimiser and schedule nodes carry `_target_` and are built with
`hydra.utils.instantiate`: a new optimiser from torch.optim is one YAML file in conf/optim/.
"""

import math
import os
import urllib.parse
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, List, Optional

import torch
from hydra.core.config_store import ConfigStore
from hydra.errors import (ConfigCompositionException, InstantiationException, MissingConfigException,
                          OverrideParseException)
from hydra.utils import instantiate
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness.training.compute import COMPILE_CHOICES, Precision
from harness.errors import ConfigError
from harness.jobs.mps import MpsMode
from harness.models.resnet import Downsample, Init, Padding, Shortcut, blocks_per_stage
from harness.probes import check_probes

# ---------------------------------------------------------------- the schemas


@dataclass
class ResNetConfig:
    _target_: str = "harness.models.resnet.CifarResNet"
    depth: int = 20  # 6n + 2
    residual: bool = True
    batchnorm: bool = True
    width: float = 1.0
    shortcut: Shortcut = Shortcut.A
    init: Init = Init.kaiming
    downsample: Downsample = Downsample.stride
    padding: Padding = Padding.zeros
    dropout: float = 0.0  # before the classifier
    block_dropout: float = 0.0  # after each block's first ReLU


@dataclass
class DataConfig:
    _target_: str = MISSING
    val_size: float = 0  # a count of training images, or a fraction of them below 1
    split_seed: int = 0
    train_subset: int = 0  # 0: all training images; else this many, the same number per class


@dataclass
class Cifar10Config(DataConfig):
    _target_: str = "harness.data.cifar10.Cifar10"
    root: str = MISSING
    download: bool = True
    url: str = MISSING
    md5: str = MISSING


@dataclass
class SyntheticConfig(DataConfig):
    _target_: str = "harness.data.synthetic.Synthetic"
    num_classes: int = 8
    image_size: int = 32
    train_size: int = 4096
    test_size: int = 1024
    seed: int = 0


@dataclass
class ImageFolderConfig(DataConfig):
    _target_: str = "harness.data.imagefolder.ImageFolder"
    root: Optional[str] = None
    cache_dir: str = MISSING


@dataclass
class AugmentConfig:
    flip: bool = False
    crop: bool = False
    pad: int = 4
    rotate: float = 0.0  # degrees: uniform in [-rotate, rotate]
    scale: float = 0.0  # a factor uniform in [1 - scale, 1 + scale]
    jitter: float = 0.0  # Gaussian pixel noise, standard deviation in units of the pixel range


@dataclass
class OptimConfig:
    """What every optimiser config has; `_partial_`: the parameters are passed in later."""

    _target_: str = MISSING
    _partial_: bool = True
    lr: float = MISSING
    weight_decay: float = 0.0
    decay_norm_and_bias: bool = False  # the harness's own: not passed to the optimiser


@dataclass
class SGDConfig(OptimConfig):
    _target_: str = "torch.optim.SGD"
    momentum: float = 0.0
    nesterov: bool = False


@dataclass
class AdamConfig(OptimConfig):
    _target_: str = "torch.optim.Adam"
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class RMSpropConfig(OptimConfig):
    _target_: str = "torch.optim.RMSprop"
    alpha: float = 0.99
    eps: float = 1e-8
    momentum: float = 0.0


@dataclass
class ScheduleConfig:
    _target_: str = MISSING
    warmup: float = 0.0  # fraction of training with a linear ramp from 0


@dataclass
class ConstantConfig(ScheduleConfig):
    _target_: str = "harness.training.optim.Constant"


@dataclass
class StepConfig(ScheduleConfig):
    _target_: str = "harness.training.optim.Step"
    milestones: List[float] = field(default_factory=lambda: [0.5, 0.75])
    gamma: float = 0.1


@dataclass
class CosineConfig(ScheduleConfig):
    _target_: str = "harness.training.optim.Cosine"
    final: float = 0.0


@dataclass
class OneCycleConfig(ScheduleConfig):
    _target_: str = "harness.training.optim.OneCycle"
    peak: float = 0.25
    start: float = 0.04
    final: float = 0.0


@dataclass
class TrainerConfig:
    epochs: int = 30
    steps: Optional[int] = None
    batch_size: int = 128
    device: str = "auto"
    seed: int = 0
    precision: Precision = Precision.auto
    channels_last: bool = True
    compile: str = "auto"  # auto, true, false or a torch.compile mode
    threads: str = "auto"  # auto or a count
    eval_every: int = 1
    log_every: int = 50
    eval_batch_size: int = 1000
    checkpoint_every: int = 1  # epochs between checkpoints in the job folder (0: only when stopped)
    progress_every: float = 30.0  # seconds between progress lines when stderr is not a terminal (0: none)
    mps: MpsMode = MpsMode.auto  # a sweep's jobs at once on one GPU: through an MPS daemon (harness.jobs.mps), or off


@dataclass
class TrackingConfig:
    uri: str = MISSING
    experiment: str = "harness"
    timeout: float = 60.0  # seconds a tracking server may take to answer before a job gives up on it


SCHEMAS = {
    "model": {"resnet": ResNetConfig},
    "data": {"cifar10": Cifar10Config, "synthetic": SyntheticConfig, "imagefolder": ImageFolderConfig},
    "augment": {"augment": AugmentConfig},
    "optim": {"sgd": SGDConfig, "adam": AdamConfig, "rmsprop": RMSpropConfig},
    "schedule": {"constant": ConstantConfig, "step": StepConfig, "cosine": CosineConfig, "onecycle": OneCycleConfig},
    "probes": {},  # each probe's schema is in its module (harness/probes/)
    "trainer": {"trainer": TrainerConfig},
    "tracking": {"tracking": TrackingConfig},
}


def register() -> None:
    """Put the schemas where the YAML files find them: /schema/<group>/<name>."""
    store = ConfigStore.instance()
    for group, schemas in SCHEMAS.items():
        for name, node in schemas.items():
            store.store(group=f"schema/{group}", name=name, node=node)


register()

# ---------------------------------------------------------------- rules types cannot express


TOP_LEVEL_KEYS = (*SCHEMAS, "paths")


def validate(cfg, image_size: int | None = None, train_images: int | None = None) -> None:
    """Raise ConfigError naming the first bad value, its key and what is allowed.

    image_size, train_images: the images' side in pixels and the number of training images
    left after the validation split, once the dataset is read; before that, what the dataset
    declares (generated data, CIFAR-10). Shifts, crops and batches are checked against them.
    """
    image_size = image_size or declared_image_size(cfg.data)
    unknown = [key for key in cfg if key not in TOP_LEVEL_KEYS]
    if unknown:
        raise ConfigError(f"{unknown[0]} is not a config group or key: use one of {', '.join(TOP_LEVEL_KEYS)}")
    for group in SCHEMAS:
        _check_known_keys(cfg[group])
    _check_model(cfg.model)
    _check_data(cfg.data)
    _check_augment(cfg.augment, image_size)
    _check_optim(cfg.optim)
    _check_schedule(cfg.schedule)
    check_probes(cfg.probes, image_size)
    _check_trainer(cfg.trainer)
    _check_sizes(cfg, train_images or declared_train_images(cfg.data))
    _check_seeds(cfg)
    check_store(cfg)
    _check_values(cfg)


def declared_image_size(cfg_data) -> int | None:
    return getattr(_target(cfg_data), "IMAGE_SIZE", None) or cfg_data.get("image_size")


def declared_train_images(cfg_data) -> int | None:
    """Training images left after the validation split, where the dataset declares its size."""
    total = getattr(_target(cfg_data), "TRAIN_SIZE", None) or cfg_data.get("train_size")
    if total is None:
        return None
    val = cfg_data.val_size
    return total - (round(val * total) if 0 < val < 1 else int(val))


def _check_sizes(cfg, train_images: int | None):
    if train_images is None:
        return
    subset = cfg.data.train_subset
    if subset > train_images:
        _fail(cfg.data, "train_subset", f"must be at most the {train_images} training images (0: all of them)")
    if cfg.trainer.batch_size > (subset or train_images):
        _fail(cfg.trainer, "batch_size", f"is larger than the {subset or train_images} training images")


def _target(node):
    from hydra._internal.utils import _locate

    try:
        return _locate(node._target_)
    except ImportError as e:
        raise ConfigError(f"{node._get_full_key('_target_')}={node._target_!r} cannot be imported: {e}") from None


def _fail(node, key: str, allowed: str):
    value = node[key]
    shown = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    _refuse(node._get_full_key(key), shown.value if isinstance(shown, Enum) else shown, allowed)


def _refuse(key: str, value, allowed: str):
    shown = repr(value)
    if len(shown) > 100:  # the line names the value; a long one by its start and length
        shown = f"{shown[:60]}...' ({len(value):,} characters)" if isinstance(value, str) else shown[:100] + "..."
    raise ConfigError(f"{key}={shown} {allowed}")


def _at_least(node, key, minimum, allowed=None):
    if not minimum <= node[key] < math.inf:  # nan and inf too
        _fail(node, key, allowed or f"must be at least {minimum}")


def _fraction(node, key, low_open=False, high_open=True):
    value = node[key]
    low_ok = value > 0 if low_open else value >= 0
    high_ok = value < 1 if high_open else value <= 1
    if not (low_ok and high_ok):
        _fail(node, key, f"must be in {'(' if low_open else '['}0, 1{')' if high_open else ']'}")


def _check_known_keys(node):
    """`+model.bar=1` adds a key even to a typed node: refuse keys its schema does not have."""
    schema = OmegaConf.get_type(node)
    if not hasattr(schema, "__dataclass_fields__"):
        return  # a config without a schema (a user's optimiser file): its class will say
    allowed = [f.name for f in fields(schema)]
    for key in node:
        if key not in allowed:
            raise ConfigError(f"{node._get_full_key(key)} is not a key of {schema.__name__}: use one of "
                              f"{', '.join(k for k in allowed if not k.startswith('_'))}")
        if OmegaConf.is_dict(node[key]):
            _check_known_keys(node[key])


MAX_DEPTH = 1202
MAX_WIDTH = 64  # 1,024 filters in the first stage, 4,096 in the last: far wider than any CIFAR study


def _check_model(m):
    if OmegaConf.get_type(m) is not ResNetConfig:
        return  # another model family: its constructor checks its arguments (see make_model)
    try:
        blocks_per_stage(m.depth)
    except ValueError:
        _fail(m, "depth", "is not a CIFAR ResNet depth: use 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...)")
    if m.depth > MAX_DEPTH:
        _fail(m, "depth", f"is deeper than {MAX_DEPTH}, the deepest CIFAR ResNet of He et al. (2016)")
    if not (0 < m.width <= MAX_WIDTH) or round(16 * m.width) < 1:
        _fail(m, "width", f"must be a positive number with at least 1 filter in the first stage (width >= 0.04) "
                          f"and at most {16 * MAX_WIDTH:,} (width <= {MAX_WIDTH})")
    if m.init == Init.fixup and not m.residual:
        _fail(m, "init", "needs model.residual=true (Fixup zero-initialises residual branches)")
    for key in ("dropout", "block_dropout"):
        _fraction(m, key)


def _check_data(d):
    if not (0 <= d.val_size < math.inf) or (d.val_size >= 1 and d.val_size != int(d.val_size)):
        _fail(d, "val_size", "must be a count of training images or a fraction in (0, 1)")
    if "image_size" in d and not 12 <= d.image_size <= 256:
        _fail(d, "image_size", "must be between 12 and 256 pixels")
    _at_least(d, "train_subset", 0)
    for key in ("train_size", "test_size"):
        if key in d:
            _at_least(d, key, 1)
            _generated_pixels(d, key)
    if "num_classes" in d and not 2 <= d.num_classes <= 8:
        _fail(d, "num_classes", "must be between 2 and 8 (the generated shapes)")
    if "train_size" in d and d.val_size >= 1 and d.val_size >= d.train_size:
        _fail(d, "val_size", f"must be smaller than data.train_size={d.train_size}")
    if "url" in d:
        url = urllib.parse.urlparse(d.url)
        if url.scheme not in ("http", "https", "file") or not (url.netloc or url.scheme == "file"):
            _fail(d, "url", "is not a URL: use http(s)://host/path or file:///path")
    if "md5" in d and not (len(d.md5) == 32 and all(c in "0123456789abcdef" for c in d.md5.lower())):
        _fail(d, "md5", "must be 32 hexadecimal digits")
    if "root" in d and not d.root:
        _fail(d, "root", "is not set: data=imagefolder needs data.root=DIR with train/<class>/ and test/<class>/")


GENERATED_PIXELS = 2**28  # per split: 4096 images of 256 pixels, ~10 GB at the generator's peak (~37 bytes a pixel)


def _generated_pixels(d, key):
    most = GENERATED_PIXELS // d.image_size**2
    if d[key] > most:
        _fail(d, key, f"is more {d.image_size}-pixel images than the harness generates: at most {most:,}")


def _check_augment(a, image_size):
    if a.crop:
        _at_least(a, "pad", 1, "must be a positive number of pixels")
        if image_size and a.pad >= image_size:
            _fail(a, "pad", f"must be smaller than the {image_size}-pixel images")
    if not 0 <= a.rotate <= 180:
        _fail(a, "rotate", "must be in [0, 180] degrees")
    _fraction(a, "scale")
    if not 0 <= a.jitter <= 1:
        _fail(a, "jitter", "must be in [0, 1] (a standard deviation in units of the pixel range)")


def _check_optim(o):
    if "lr" not in o or not 0 < o.lr < math.inf:
        raise ConfigError(f"optim.lr={o.get('lr')!r} must be a positive number")
    _at_least(o, "weight_decay", 0)
    for key in ("momentum", "eps", "alpha"):
        if key in o:
            _at_least(o, key, 0)
    if "betas" in o and not (len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas)):
        _fail(o, "betas", "must be two numbers in [0, 1)")
    try:  # what only the optimiser knows: build it over one parameter
        optimizer_factory(o)([torch.zeros(1, requires_grad=True)])
    except (TypeError, ValueError) as e:
        settings = {k: v for k, v in OmegaConf.to_container(o).items() if not k.startswith("_")}
        raise ConfigError(f"optim {settings} is refused by {o._target_}: {str(e).splitlines()[0]}") from None


# ---------------------------------------------------------------- objects from config


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


def _check_schedule(s):
    _fraction(s, "warmup")
    if "milestones" in s:
        if not all(0 < m < 1 for m in s.milestones):
            _fail(s, "milestones", "must be fractions of training in (0, 1)")
        _at_least(s, "gamma", 0)
    if "peak" in s:
        _fraction(s, "peak", low_open=True)
    for key in ("start", "final"):
        if key in s:
            _fraction(s, key, high_open=False)


def _check_trainer(t):
    for key in ("epochs", "batch_size", "eval_every", "log_every", "eval_batch_size"):
        _at_least(t, key, 1, "must be a positive integer")
    _at_least(t, "checkpoint_every", 0)
    _at_least(t, "progress_every", 0, "must be 0 (no progress lines) or a number of seconds")
    if t.steps is not None:
        _at_least(t, "steps", 1, "must be a positive integer (or null: train trainer.epochs)")
    if str(t.compile).lower() not in COMPILE_CHOICES:
        _fail(t, "compile", f"is not one of {', '.join(COMPILE_CHOICES)}")
    cpus = os.cpu_count() or 1
    if not (t.threads == "auto" or (t.threads.isdigit() and 0 < int(t.threads) <= cpus)):
        _fail(t, "threads", f"must be auto or a positive integer up to this machine's {cpus} CPUs")
    try:
        device = torch.device(t.device) if t.device != "auto" else None
    except (RuntimeError, TypeError):
        device = "bad"
    if device == "bad" or (device is not None and device.type not in ("cpu", "cuda")):
        _fail(t, "device", "is not a device: use auto, cpu or cuda[:N]")
    if device is not None and device.type == "cuda" and not torch.cuda.is_available():
        _fail(t, "device", "but no CUDA device is available: use auto or cpu")
    if device is not None and device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        _fail(t, "device", f"but this machine has {torch.cuda.device_count()} CUDA devices: use auto or "
                           f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")


SEEDS = ("trainer.seed", "data.split_seed", "data.seed", "probes.shift.seed", "probes.invariance.seed")
URI_BREAKERS = "?%"  # a query, a %-escape: in a sqlite:// URI each moves the store elsewhere
MLFLOW_EXPERIMENT_NAME = 500  # MLflow's longest experiment name
MLFLOW_PARAM_VALUE = 6000  # MLflow's longest parameter value: every config value is logged as one


def _check_seeds(cfg):
    """Each seed reaches a torch generator, which takes no integer of 2**64 or more."""
    for key in SEEDS:
        group, _, name = key.rpartition(".")
        node = OmegaConf.select(cfg, group)
        if node is not None and name in node and not 0 <= node[name] < 2**64:
            _fail(node, name, "must be a non-negative integer below 2**64 (what torch's generators take)")


def check_store(cfg):
    """The runs folder, the store and the experiment: each refused before anything is written."""
    runs = str(cfg.paths.runs)
    if any(c in runs for c in URI_BREAKERS) or not runs.isprintable():
        _fail(cfg.paths, "runs", "must be a folder without ? or % (they break the store's sqlite:// URI) "
                                 "or control characters")
    t = cfg.tracking
    if not t.uri.startswith(("sqlite:////", "http://", "https://")):
        _fail(t, "uri", "is not supported: use sqlite:////abs/path/mlflow.db or http://HOST:PORT "
                        "(MLflow >= 3.13 refuses the ./mlruns file store)")
    if t.uri.startswith("sqlite:") and any(c in t.uri for c in URI_BREAKERS):
        _fail(t, "uri", "must name the store's file without ? or %: sqlite:////abs/path/mlflow.db")
    if not str(cfg.paths.data).strip():
        _fail(cfg.paths, "data", "must be a folder (downloads and decoded-image caches go there)")
    if not 0 < len(t.experiment) <= MLFLOW_EXPERIMENT_NAME:
        _fail(t, "experiment", f"must be a name of 1 to {MLFLOW_EXPERIMENT_NAME} characters (MLflow's limit)")
    if not 0 < t.timeout <= 86400:
        _fail(t, "timeout", "must be a positive number of seconds, at most 86400 (a day)")


def _check_values(cfg):
    """Every value is logged as an MLflow parameter and may appear in a one-line message; every
    integer reaches torch or MLflow as a 64-bit one (seeds: _check_seeds)."""
    for key, value in _leaves(plain(cfg)):
        if isinstance(value, int) and key not in SEEDS and not -2**63 <= value < 2**63:
            _refuse(key, value, "does not fit in 64 bits: use an integer below 2**63")
        if not isinstance(value, str):
            continue
        if not value.isprintable():
            control = next(c for c in value if not c.isprintable())
            _refuse(key, value, f"has a control character ({control!r}): use printable characters only")
        if len(value) > MLFLOW_PARAM_VALUE:
            _refuse(key, value, f"is longer than the {MLFLOW_PARAM_VALUE} characters MLflow keeps of a parameter")


def _leaves(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


# ---------------------------------------------------------------- composition errors in one line


def one_line(error: Exception) -> str:
    """Hydra's and OmegaConf's composition errors, as one line that names the bad value."""
    if isinstance(error, MissingConfigException) and error.missing_cfg_file:
        group, _, choice = error.missing_cfg_file.rpartition("/")
        options = [o for o in (error.options or []) if o]
        if options:
            return f"{group}={choice} is not a config choice: use one of {', '.join(sorted(options))}"
    cause = error
    while cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        message = str(cause).splitlines()[0]
        if "is not a valid bool" in message:
            message += ": use true or false (also yes/no, on/off, 1/0)"
        return f"{cause.full_key}: {message}" + _key_hint(cause)
    first = str(error).strip().splitlines()
    text = first[0] if first else type(error).__name__
    if isinstance(error, OverrideParseException):  # the override's syntax: name it, and the grammar
        return (f"{_escaped(error.override)}: {text} "
                "(override grammar: https://hydra.cc/docs/advanced/override_grammar/basic/)")
    append = next((line for line in first if "To append to your" in line), None)
    if append:  # `experiment=x` where `+experiment=x` was meant
        return f"{text} {append.strip()}"
    return text


def _escaped(text: str) -> str:
    """A newline or tab typed into an override, shown as \\n or \\t: the message stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _key_hint(cause) -> str:
    if "not in" not in str(cause):
        return ""
    object_type, parent = getattr(cause, "object_type", None), getattr(cause, "parent_node", None)
    if object_type is not None and hasattr(object_type, "__dataclass_fields__"):
        keys = [f.name for f in fields(object_type)]
    elif OmegaConf.is_dict(parent):  # a config file without a schema: the keys it has
        keys = [str(k) for k in parent.keys()]
    else:
        return ""
    return f" (allowed keys: {', '.join(k for k in keys if not k.startswith('_'))})"


COMPOSITION_ERRORS = (ConfigCompositionException, MissingConfigException, OverrideParseException,
                      OmegaConfBaseException)


def plain(node) -> Any:
    """A config node as plain Python values (enums as their names)."""
    return OmegaConf.to_container(node, resolve=True, enum_to_str=True)
