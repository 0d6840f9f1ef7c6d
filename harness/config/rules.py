"""Rules that types cannot say: ranges, sizes against the images, what a store accepts.

`validate(cfg)` raises ConfigError naming the first bad value, its key and what is allowed,
each rule stated once; the constructors trust it. A model family's own rules live in its
module (`check(cfg_model)`, harness.models), and use `fail`, `at_least` and `fraction` here.
"""

import math
import os
import urllib.parse
from dataclasses import fields
from enum import Enum

import torch
from omegaconf import OmegaConf

from harness import contract
from harness.config.factories import locate, model_family, optimizer_factory
from harness.config.schema import SCHEMAS, plain
from harness.data.synthetic import CLASSES as GENERATED_CLASSES
from harness.errors import ConfigError
from harness.probes import check_probes
from harness.training.compute import COMPILE_CHOICES

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
        check_known_keys(cfg[group])
    _check_model_family(cfg.model)
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
    return getattr(locate(cfg_data), "IMAGE_SIZE", None) or cfg_data.get("image_size")


def declared_train_images(cfg_data) -> int | None:
    """Training images left after the validation split, where the dataset declares its size."""
    total = getattr(locate(cfg_data), "TRAIN_SIZE", None) or cfg_data.get("train_size")
    if total is None:
        return None
    val = cfg_data.val_size
    return total - (round(val * total) if 0 < val < 1 else int(val))


def _check_sizes(cfg, train_images: int | None):
    if train_images is None:
        return
    subset = cfg.data.train_subset
    if subset > train_images:
        fail(cfg.data, "train_subset", f"must be at most the {train_images} training images (0: all of them)")
    if cfg.trainer.batch_size > (subset or train_images):
        fail(cfg.trainer, "batch_size", f"is larger than the {subset or train_images} training images")


def fail(node, key: str, allowed: str):
    value = node[key]
    shown = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    refuse(node._get_full_key(key), shown.value if isinstance(shown, Enum) else shown, allowed)


def refuse(key: str, value, allowed: str):
    shown = repr(value)
    if len(shown) > 100:  # the line names the value; a long one by its start and length
        shown = f"{shown[:60]}...' ({len(value):,} characters)" if isinstance(value, str) else shown[:100] + "..."
    raise ConfigError(f"{key}={shown} {allowed}")


def at_least(node, key, minimum, allowed=None):
    value = node[key]  # untyped in a config file without a schema: it may be a string
    if not isinstance(value, (int, float)) or not minimum <= value < math.inf:  # nan and inf too
        fail(node, key, allowed or f"must be at least {minimum}")


def fraction(node, key, low_open=False, high_open=True):
    value = node[key]
    low_ok = value > 0 if low_open else value >= 0
    high_ok = value < 1 if high_open else value <= 1
    if not (low_ok and high_ok):
        fail(node, key, f"must be in {'(' if low_open else '['}0, 1{')' if high_open else ']'}")


def check_known_keys(node):
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
            check_known_keys(node[key])


def _check_model_family(m):
    """The family declares LABELS whose columns name axes analysis knows; its own rules say the rest."""
    family = model_family(m)
    for column, label in family.LABELS.get("columns", {}).items():
        if label.get("axis") not in contract.AXES:
            raise ConfigError(f"{family.__name__}.LABELS: column {column!r} names axis {label.get('axis')!r}, "
                              f"not one of harness.contract.AXES ({', '.join(contract.AXES)})")
    if hasattr(family, "check"):
        family.check(m)


def _check_data(d):
    if not (0 <= d.val_size < math.inf) or (d.val_size >= 1 and d.val_size != int(d.val_size)):
        fail(d, "val_size", "must be a count of training images or a fraction in (0, 1)")
    if "image_size" in d and not 12 <= d.image_size <= 256:
        fail(d, "image_size", "must be between 12 and 256 pixels")
    at_least(d, "train_subset", 0)
    at_least(d, "test_subset", 0)
    if "test_size" in d and d.test_subset > d.test_size:
        fail(d, "test_subset", f"must be at most data.test_size={d.test_size} (0: all of them)")
    for key in ("train_size", "test_size"):
        if key in d:
            at_least(d, key, 1)
            _generated_pixels(d, key)
    if "num_classes" in d and not 2 <= d.num_classes <= len(GENERATED_CLASSES):
        fail(d, "num_classes", f"must be between 2 and {len(GENERATED_CLASSES)} (the generated shapes)")
    if "train_size" in d and d.val_size >= 1 and d.val_size >= d.train_size:
        fail(d, "val_size", f"must be smaller than data.train_size={d.train_size}")
    if "url" in d:
        url = urllib.parse.urlparse(d.url)
        if url.scheme not in ("http", "https", "file") or not (url.netloc or url.scheme == "file"):
            fail(d, "url", "is not a URL: use http(s)://host/path or file:///path")
    if "md5" in d and not (len(d.md5) == 32 and all(c in "0123456789abcdef" for c in d.md5.lower())):
        fail(d, "md5", "must be 32 hexadecimal digits")
    if "root" in d and not d.root:
        fail(d, "root", "is not set: data=imagefolder needs data.root=DIR with train/<class>/ and test/<class>/")


GENERATED_PIXELS = 2**28  # per split: 4096 images of 256 pixels, ~10 GB at the generator's peak (~37 bytes a pixel)


def _generated_pixels(d, key):
    most = GENERATED_PIXELS // d.image_size**2
    if d[key] > most:
        fail(d, key, f"is more {d.image_size}-pixel images than the harness generates: at most {most:,}")


def _check_augment(a, image_size):
    if a.crop:
        at_least(a, "pad", 1, "must be a positive number of pixels")
        if image_size and a.pad >= image_size:
            fail(a, "pad", f"must be smaller than the {image_size}-pixel images")
    if not 0 <= a.rotate <= 180:
        fail(a, "rotate", "must be in [0, 180] degrees")
    fraction(a, "scale")
    if not 0 <= a.jitter <= 1:
        fail(a, "jitter", "must be in [0, 1] (a standard deviation in units of the pixel range)")


def _check_optim(o):
    if not isinstance(o.get("lr"), (int, float)) or not 0 < o.lr < math.inf:
        raise ConfigError(f"optim.lr={o.get('lr')!r} must be a positive number")
    for key in ("weight_decay", "momentum", "eps", "alpha"):  # weight_decay: 0 where a file leaves it out
        if key in o:
            at_least(o, key, 0)
    betas = o.get("betas")
    if "betas" in o and not (OmegaConf.is_list(betas) and len(betas) == 2
                             and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)):
        fail(o, "betas", "must be two numbers in [0, 1)")
    try:  # what only the optimiser knows: build it over one parameter
        optimizer_factory(o)([torch.zeros(1, requires_grad=True)])
    except (TypeError, ValueError) as e:
        settings = {k: v for k, v in OmegaConf.to_container(o).items() if not k.startswith("_")}
        raise ConfigError(f"optim {settings} is refused by {o._target_}: {str(e).splitlines()[0]}") from None


def _check_schedule(s):
    fraction(s, "warmup")
    if "milestones" in s:
        if not all(0 < m < 1 for m in s.milestones):
            fail(s, "milestones", "must be fractions of training in (0, 1)")
        at_least(s, "gamma", 0)
    if "peak" in s:
        fraction(s, "peak", low_open=True)
    for key in ("start", "final"):
        if key in s:
            fraction(s, key, high_open=False)


def _check_trainer(t):
    for key in ("epochs", "batch_size", "eval_every", "log_every", "eval_batch_size"):
        at_least(t, key, 1, "must be a positive integer")
    at_least(t, "checkpoint_every", 0)
    at_least(t, "progress_every", 0, "must be 0 (no progress lines) or a number of seconds")
    if t.steps is not None:
        at_least(t, "steps", 1, "must be a positive integer (or null: train trainer.epochs)")
    if str(t.compile).lower() not in COMPILE_CHOICES:
        fail(t, "compile", f"is not one of {', '.join(COMPILE_CHOICES)}")
    cpus = os.cpu_count() or 1
    if not (t.threads == "auto" or (t.threads.isdigit() and 0 < int(t.threads) <= cpus)):
        fail(t, "threads", f"must be auto or a positive integer up to this machine's {cpus} CPUs")
    try:
        device = torch.device(t.device) if t.device != "auto" else None
    except (RuntimeError, TypeError):
        device = "bad"
    if device == "bad" or (device is not None and device.type not in ("cpu", "cuda")):
        fail(t, "device", "is not a device: use auto, cpu or cuda[:N]")
    if device is not None and device.type == "cuda" and not torch.cuda.is_available():
        fail(t, "device", "but no CUDA device is available: use auto or cpu")
    if device is not None and device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        fail(t, "device", f"but this machine has {torch.cuda.device_count()} CUDA devices: use auto or "
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
            fail(node, name, "must be a non-negative integer below 2**64 (what torch's generators take)")


def check_store(cfg):
    """The runs folder, the store and the experiment: each refused before anything is written."""
    runs = str(cfg.paths.runs)
    if any(c in runs for c in URI_BREAKERS) or not runs.isprintable():
        fail(cfg.paths, "runs", "must be a folder without ? or % (they break the store's sqlite:// URI) "
                                 "or control characters")
    t = cfg.tracking
    if not t.uri.startswith(("sqlite:////", "http://", "https://")):
        fail(t, "uri", "is not supported: use sqlite:////abs/path/mlflow.db or http://HOST:PORT "
                        "(MLflow >= 3.13 refuses the ./mlruns file store)")
    if t.uri.startswith("sqlite:") and any(c in t.uri for c in URI_BREAKERS):
        fail(t, "uri", "must name the store's file without ? or %: sqlite:////abs/path/mlflow.db")
    if not str(cfg.paths.data).strip():
        fail(cfg.paths, "data", "must be a folder (downloads and decoded-image caches go there)")
    if not 0 < len(t.experiment) <= MLFLOW_EXPERIMENT_NAME:
        fail(t, "experiment", f"must be a name of 1 to {MLFLOW_EXPERIMENT_NAME} characters (MLflow's limit)")
    if not 0 < t.timeout <= 86400:
        fail(t, "timeout", "must be a positive number of seconds, at most 86400 (a day)")


def _check_values(cfg):
    """Every value is logged as an MLflow parameter and may appear in a one-line message; every
    integer reaches torch or MLflow as a 64-bit one (seeds: _check_seeds)."""
    for key, value in _leaves(plain(cfg)):
        if isinstance(value, int) and key not in SEEDS and not -2**63 <= value < 2**63:
            refuse(key, value, "does not fit in 64 bits: use an integer below 2**63")
        if not isinstance(value, str):
            continue
        if not value.isprintable():
            control = next(c for c in value if not c.isprintable())
            refuse(key, value, f"has a control character ({control!r}): use printable characters only")
        if len(value) > MLFLOW_PARAM_VALUE:
            refuse(key, value, f"is longer than the {MLFLOW_PARAM_VALUE} characters MLflow keeps of a parameter")


def _leaves(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
