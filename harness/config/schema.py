"""The config schema: one dataclass per config group, registered in Hydra's ConfigStore.

Each group's YAML extends its schema (`defaults: [/schema/<group>/<name>@_here_, _self_]`),
so OmegaConf checks types while Hydra composes the config: `trainer.epochs=abc` is refused,
`augment.flip=no` is False. A model family's schema lives in its own module (harness.models),
which registers it with `register_model`.

An optimiser without a schema of its own extends /schema/optim/any and names its torch.optim
class as `_target_`, with `lr` and whatever settings the class takes: its values are checked
by the rules every optimiser shares and by the class itself (harness.config.rules).
"""

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from harness.jobs.mps import MpsMode
from harness.training.compute import Precision


@dataclass
class DataConfig:
    _target_: str = MISSING
    val_size: float = 0  # a count of training images, or a fraction of them below 1
    split_seed: int = 0
    train_subset: int = 0  # 0: all training images; else this many, the same number per class
    test_subset: int = 0  # 0: the whole test set; else this many, the same number per class


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
    compile: Any = "auto"  # auto, true, false or a torch.compile mode (Any: false stays a boolean)
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
    "model": {},  # each family's module adds its own (register_model)
    "data": {"cifar10": Cifar10Config, "synthetic": SyntheticConfig, "imagefolder": ImageFolderConfig},
    "augment": {"augment": AugmentConfig},
    "optim": {"sgd": SGDConfig, "adam": AdamConfig, "rmsprop": RMSpropConfig},
    "schedule": {"constant": ConstantConfig, "step": StepConfig, "cosine": CosineConfig, "onecycle": OneCycleConfig},
    "probes": {},  # each probe's schema is in its module (harness/probes/)
    "trainer": {"trainer": TrainerConfig},
    "tracking": {"tracking": TrackingConfig},
}


# OptimConfig's own fields, untyped: a file extending it may add any setting its class takes
ANY_OPTIMIZER = {"_partial_": True, "weight_decay": 0.0, "decay_norm_and_bias": False}


def register() -> None:
    """Put the schemas where the YAML files find them: /schema/<group>/<name>."""
    for group, schemas in SCHEMAS.items():
        for name, node in schemas.items():
            ConfigStore.instance().store(group=f"schema/{group}", name=name, node=node)
    ConfigStore.instance().store(group="schema/optim", name="any", node=ANY_OPTIMIZER)


def register_model(name: str, schema) -> None:
    """A model family's schema, registered by its module: conf/model/<name>.yaml extends
    /schema/model/<name>."""
    SCHEMAS["model"][name] = schema
    ConfigStore.instance().store(group="schema/model", name=name, node=schema)


def plain(node) -> Any:
    """A config node as plain Python values (enums as their names)."""
    return OmegaConf.to_container(node, resolve=True, enum_to_str=True)
