"""What a job is doing, for whoever watches it: on a terminal a tqdm bar over the job's steps,
without one (a log file, a cluster job, a terminal of width 0, jobs running at once under
joblib) a log line every few seconds, with the same facts:
step, epoch, images per second, the ETA of the epoch and of the job, the training loss of
the last log window; and a line as each validation, probe scoring and final test begins.

Nothing here waits for the device. The bar advances as the host issues steps (on a GPU the
host runs at most a queue's length ahead), and the loss is copied to host memory without
blocking at each log point and shown once the copy has landed, so it may lag a window.
"""

import logging
import os
import sys
import time
from contextlib import contextmanager

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from harness.jobs.processes import in_joblib_worker

log = logging.getLogger(__name__)


class LaggedValue:
    """A device scalar's latest value that can be read without waiting for the device."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.host = torch.zeros((), pin_memory=self.cuda)
        self.event = torch.cuda.Event() if self.cuda else None
        self.copied = False
        self.value = None

    def offer(self, tensor: torch.Tensor) -> None:
        if not self.cuda:
            self.value = float(tensor)  # a CPU tensor: reading it waits for nothing
            return
        if self.copied and not self.event.query():
            return  # the last copy is still in flight: keep showing the one before
        if self.copied:
            self.value = float(self.host)
        self.host.copy_(tensor.detach(), non_blocking=True)
        self.event.record()
        self.copied = True


class Progress:
    """label: what the job is, e.g. `job 3/8 d56 plain` (None: show nothing); every_s:
    seconds between lines when stderr is not a terminal (0: none)."""

    def __init__(self, label: str | None, total_steps: int, steps_per_epoch: int, batch_size: int,
                 device: torch.device, every_s: float = 30.0, stream=None):
        self.label, self.total, self.per_epoch, self.batch = label, total_steps, steps_per_epoch, batch_size
        self.stream = stream or sys.stderr
        self.quiet = label is None
        self.terminal = not self.quiet and _own_terminal(self.stream)
        self.every_s = 0 if self.quiet else every_s
        self.loss = LaggedValue(device)
        self.step = self.started_at_step = 0
        self.started = self.last_line = self.last_postfix = time.monotonic()
        self.paused = 0.0  # seconds spent in phases: not training, not in the rate
        self.bar = None
        self._redirect = None

    @contextmanager
    def running(self, step: int):
        """Training from `step` (a resumed job starts where it stopped) to the end of the block."""
        self._start(step)
        try:
            yield self
        finally:
            self.close()

    def _start(self, step: int) -> None:
        self.step = self.started_at_step = step
        self.started = self.last_line = time.monotonic()
        if self.terminal:
            self.bar = tqdm(total=self.total, initial=step, desc=self.label or "training", unit="step",
                            file=self.stream, dynamic_ncols=True, leave=False, mininterval=0.25,
                            bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} steps "
                                       "[{elapsed}<{remaining}]{postfix}")
            self._redirect = logging_redirect_tqdm()  # log lines print above the bar, not through it
            self._redirect.__enter__()

    def advance(self, step: int) -> None:
        """A step was issued; cheap enough to call at every step."""
        self.step = step
        now = time.monotonic()
        if self.bar is not None:
            self.bar.update(1)
            if now - self.last_postfix > 0.5:
                self.bar.set_postfix_str(self.facts(now, with_step=False), refresh=False)
                self.last_postfix = now
        elif self.every_s and now - self.last_line >= self.every_s:
            log.info("%s", self.facts(now))
            self.last_line = now

    def facts(self, now: float, with_step: bool = True) -> str:
        rate = (self.step - self.started_at_step) / max(now - self.started - self.paused, 1e-9)  # steps/s
        epochs = -(-self.total // self.per_epoch)
        epoch = min(self.step // self.per_epoch + 1, epochs)
        epoch_left = min(epoch * self.per_epoch, self.total) - self.step
        parts = [f"step {self.step:,}/{self.total:,}"] if with_step else []
        parts.append(f"epoch {epoch}/{epochs}")
        if rate > 0:
            parts.append(f"{rate * self.batch:,.0f} img/s, epoch ETA {_clock(epoch_left / rate)}")
            if with_step:
                parts.append(f"job ETA {_clock((self.total - self.step) / rate)}")
        if self.loss.value is not None:
            parts.append(f"loss {self.loss.value:.4f}")
        return (f"{self.label}: " if self.label and with_step else "") + ", ".join(parts)

    def say(self, message: str, *args, level: int = logging.INFO) -> None:
        """A log line about the job, labelled with it: with several jobs at once, whose line it is."""
        log.log(level, ("%s: " % self.label if self.label else "") + message, *args)

    @contextmanager
    def phase(self, what: str):
        """A line as a stretch without steps begins (validation, probes, the final test)."""
        if not self.quiet:
            log.info("%s%s", f"{self.label}: " if self.label else "", what)
        if self.bar is not None:
            self.bar.set_postfix_str(what, refresh=True)
        began = time.monotonic()
        yield
        self.last_line = time.monotonic()
        self.paused += self.last_line - began

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self._redirect.__exit__(None, None, None)
            self.bar = None


def _own_terminal(stream) -> bool:
    """A terminal a bar can be drawn on: it has a width (`script` to a file gives one of 0), and
    this job is not one of several a joblib launcher runs at once, whose bars would share a line
    (those jobs print labelled lines instead)."""
    try:
        width = os.get_terminal_size(stream.fileno()).columns if stream.isatty() else 0
    except (OSError, ValueError, AttributeError):  # no file descriptor (a test's StringIO)
        width = 0
    return width > 0 and not in_joblib_worker()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
