"""How a job computes: device, precision, memory layout, compilation and CPU threads.

Resolved once per job from the `trainer` config (harness.config.validate has checked every value
before anything is written) and applied to the process: thread count, cuDNN autotuning.
"""

import os
from contextlib import nullcontext
from dataclasses import dataclass
from enum import Enum

import torch


class Precision(str, Enum):
    auto = "auto"  # bf16 where the device has fast bf16, else fp32
    fp32 = "fp32"
    bf16 = "bf16"  # autocast


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_CHOICES = ("auto", "true", "false", *COMPILE_MODES)


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
    """From a validated `trainer` config (harness.config.validate)."""
    device = resolve_device(cfg_trainer.device)
    return Compute(device, resolve_precision(cfg_trainer.precision, device), cfg_trainer.channels_last,
                   resolve_compile(cfg_trainer.compile, device), resolve_threads(cfg_trainer.threads))


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
    return torch.device(name)  # harness.config.validate checks that a CUDA device is there


def bf16_supported(device: torch.device) -> bool:
    """Fast bf16 arithmetic: a CUDA device that has it, or a CPU with native bf16 instructions
    (AVX512-BF16 or AMX; oneDNN also runs bf16 on plain AVX512, by emulation, which is no faster)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if not hasattr(torch.cpu, "get_capabilities"):  # an older torch: no public way to ask, so fp32
        return False
    capabilities = torch.cpu.get_capabilities()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def resolve_precision(precision: Precision, device: torch.device) -> str:
    if precision == Precision.auto:
        return "bf16" if bf16_supported(device) else "fp32"
    return Precision(precision).value


def resolve_compile(value: str, device: torch.device) -> str | None:
    """false: eager; true: CUDA graphs on a GPU (launch overhead dominates small nets), default on CPU;
    auto: CUDA graphs on a GPU (on an H200 ResNet-20 trained 2.8x faster so), eager on a CPU (no clear gain);
    or a torch.compile mode."""
    value = str(value).lower()  # true and false may arrive as booleans, turned into "True" and "False"
    if value == "auto":
        return "reduce-overhead" if device.type == "cuda" else None
    if value == "false":
        return None
    if value == "true":
        return "reduce-overhead" if device.type == "cuda" else "default"
    return value


def resolve_threads(value: str) -> int:
    """auto: OMP_NUM_THREADS when set (joblib sets it to CPUs / n_jobs in its workers), else every usable CPU."""
    if str(value) == "auto":
        env = os.environ.get("OMP_NUM_THREADS", "")
        return int(env) if env.isdigit() and int(env) > 0 else usable_cpus()
    return int(value)


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
