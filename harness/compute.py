"""How a job computes: device, precision, memory layout, compilation and CPU threads.

Resolved once per job from the `trainer` config (every bad value raises ConfigError before
anything is written) and applied to the process: thread count, cuDNN autotuning.
"""

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from harness.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class Compute:
    device: torch.device
    precision: str  # "fp32" or "bf16" (autocast)
    channels_last: bool
    compile_mode: str | None  # a torch.compile mode, or None: eager
    threads: int  # intra-op CPU threads

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self):
        """The context the model runs in: bf16 autocast, or nothing for fp32."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def describe(self) -> dict:
        """For the run's tags."""
        return {"precision": self.precision, "channels_last": str(self.channels_last).lower(),
                "compile": self.compile_mode or "off", "threads": self.threads}


def resolve_compute(cfg_trainer) -> Compute:
    device = resolve_device(cfg_trainer.device)
    return Compute(device, resolve_precision(cfg_trainer.precision, device),
                   _require_bool(cfg_trainer, "channels_last"), resolve_compile(cfg_trainer.compile, device),
                   resolve_threads(cfg_trainer.threads))


def apply(compute: Compute) -> None:
    """Set the process-wide knobs a job's speed depends on."""
    torch.set_num_threads(compute.threads)
    if compute.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # every training step has the same shapes: tune once
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 runs: TF32 tensor cores, as cuDNN convs already do
        torch.backends.cudnn.allow_tf32 = True


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"trainer.device={name!r} is not a device: use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name!r} but no CUDA device is available: use auto or cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"trainer.device={name!r} is not supported: use auto, cpu or cuda[:N]")
    return device


def bf16_supported(device: torch.device) -> bool:
    """Fast bf16 arithmetic: a CUDA device that has it, or a CPU with native bf16 instructions
    (AVX512-BF16 or AMX; oneDNN also runs bf16 on plain AVX512, by emulation, which is no faster)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if not hasattr(torch.cpu, "get_capabilities"):  # an older torch: no public way to ask, so fp32
        return False
    capabilities = torch.cpu.get_capabilities()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def resolve_precision(name: str, device: torch.device) -> str:
    if name not in PRECISIONS:
        raise ConfigError(f"trainer.precision={name!r} is not one of {', '.join(PRECISIONS)}")
    if name == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    return name


def resolve_compile(value, device: torch.device) -> str | None:
    """false: eager; true: CUDA graphs on a GPU (launch overhead dominates small nets), default on CPU;
    auto: CUDA graphs on a GPU (on an H200 ResNet-20 trained 2.8x faster so), eager on a CPU (no clear gain)."""
    if value == "auto":
        return "reduce-overhead" if device.type == "cuda" else None
    if value is False:
        return None
    if value is True:
        return "reduce-overhead" if device.type == "cuda" else "default"
    if value in COMPILE_MODES:
        return value
    raise ConfigError(f"trainer.compile={value!r} is not one of auto, false, true, {', '.join(COMPILE_MODES)}")


def resolve_threads(value) -> int:
    """auto: OMP_NUM_THREADS when set (joblib sets it to CPUs / n_jobs in its workers), else every usable CPU."""
    if value == "auto":
        env = os.environ.get("OMP_NUM_THREADS", "")
        return int(env) if env.isdigit() and int(env) > 0 else usable_cpus()
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"trainer.threads={value!r} must be auto or a positive integer")
    return value


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def compile_model(model: torch.nn.Module, compute: Compute):
    """The callable the training step runs: the model itself, or its compiled form (same parameters)."""
    if compute.compile_mode is None:
        return model
    # a sweep runs its jobs in one process: forget the last job's graphs, or after a few
    # jobs torch.compile hits its recompile limit and silently runs eager
    torch.compiler.reset()
    return torch.compile(model, mode=compute.compile_mode)


def _require_bool(node, key: str) -> bool:
    value = node[key]
    if not isinstance(value, bool):
        raise ConfigError(f"trainer.{key}={value!r} must be true or false")
    return value
