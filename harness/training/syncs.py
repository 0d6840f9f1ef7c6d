"""Catch the training step waiting for the device (host-device synchronisation).

A step that reads a device value on the host (`.item()`, `if loss > x`, a boolean mask,
`.cpu()`) stalls the host until the GPU has caught up, so the GPU then idles while the
host prepares the next step. Two detectors, used together by `HostSyncs.step`:

- every device: a TorchDispatchMode that records the aten ops which return data to the
  host (`_local_scalar_dense` is what `.item()` and `bool()` run; `nonzero` is what masks
  run). It sees eager ops only: a torch.compile'd model runs as one opaque graph;
- CUDA: `torch.cuda.set_sync_debug_mode("warn")`, which warns on each synchronising CUDA
  call, compiled code included (or "error", which raises there).
"""

import contextlib
import warnings

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# what torch.cuda.set_sync_debug_mode("warn") warns (c10's warn_or_error_on_sync); the mode's own
# "prototype feature" notice, emitted once per process, also mentions synchronisation
CUDA_SYNC_WARNING = "called a synchronizing CUDA operation"

# aten ops whose result depends on device data the host has to read back
HOST_READING_OPS = {
    "_local_scalar_dense", "is_nonzero", "equal", "nonzero", "masked_select", "unique_dim",
    "_unique", "_unique2", "unique_consecutive",
}


class _RecordHostReads(TorchDispatchMode):
    def __init__(self, found: list):
        super().__init__()
        self.found = found

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        if name in HOST_READING_OPS or _masks(name, args) or _copies_to_host(name, args, kwargs or {}):
            self.found.append(name)
        return func(*args, **(kwargs or {}))


def _masks(name: str, args) -> bool:
    """x[mask] and x[mask] = v: the output's size depends on how many elements are set."""
    return name in ("index", "index_put", "index_put_") and any(
        isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1] if i is not None)


def _copies_to_host(name: str, args, kwargs) -> bool:
    if name == "_to_copy":
        device = kwargs.get("device")
        return args[0].device.type != "cpu" and device is not None and torch.device(device).type == "cpu"
    if name == "copy_":
        return args[0].device.type == "cpu" and args[1].device.type != "cpu"
    return False


class HostSyncs:
    """Pass `step` as train()'s step_context; afterwards `found` names every synchronising op.

    The first `warmup` steps are not checked: a compiled model's first calls compile and
    record CUDA graphs, which synchronise once by design. cuda_mode="error" makes a
    synchronising CUDA call raise instead of being recorded.
    """

    def __init__(self, device: torch.device, eager: bool = True, warmup: int = 0, cuda_mode: str = "warn"):
        self.device, self.eager, self.warmup, self.cuda_mode = torch.device(device), eager, warmup, cuda_mode
        self.found = []
        self.steps = 0

    @contextlib.contextmanager
    def step(self):
        self.steps += 1
        with contextlib.ExitStack() as stack:
            if self.steps > self.warmup:
                if self.device.type == "cuda":
                    stack.enter_context(_cuda_sync_debug(self.found, self.cuda_mode))
                if self.eager:
                    stack.enter_context(_RecordHostReads(self.found))
            yield


@contextlib.contextmanager
def _cuda_sync_debug(found: list, mode: str):
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode(mode)
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    found.extend(cuda_syncs(caught))


def cuda_syncs(caught_warnings) -> list:
    """The synchronising-call warnings among caught warnings, as one line each."""
    return [f"cuda: {w.message}".splitlines()[0] for w in caught_warnings if CUDA_SYNC_WARNING in str(w.message)]
