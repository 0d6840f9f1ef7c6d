"""The training loop: sample batch, augment, forward, loss, backward, step, log.

Nothing in a step reads a device value on the host: the running loss and accuracy are
device tensors handed to the metric buffer, which reads them all at once at the end of an
epoch (the flush point, where evaluation syncs anyway). Divergence is detected there too.
"""

import logging
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from harness.batches import Normalise, TrainBatches, eval_batches
from harness.data import Splits

log = logging.getLogger(__name__)


@dataclass
class Setup:
    """What a job trains with; built by harness.app.build from the config."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    batches: TrainBatches
    splits: Splits
    normalise: Normalise
    device: torch.device
    precision: str  # "fp32" or "bf16"


@dataclass
class Outcome:
    status: str  # "finished" or "diverged"
    steps: int
    final: dict = field(default_factory=dict)  # last value of each metric, on the host


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


@torch.inference_mode()
def evaluate(model, x, y, normalise, batch_size, device, precision):
    """(mean cross-entropy, accuracy) over a whole split, as 0-d device tensors."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    for xb, yb in eval_batches(x, y, batch_size):
        with autocast(device, precision):
            logits = model(normalise(xb))
        loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum")
        correct += (logits.argmax(1) == yb).sum()
    model.train(was_training)
    return loss_sum / len(x), correct.float() / len(x)


class Progress:
    """A one-line progress bar per epoch on a terminal; nothing otherwise (epoch lines are logged)."""

    def __init__(self, enabled=None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled

    def update(self, epoch, epochs, done, total):
        if self.enabled:
            filled = int(30 * done / total)
            sys.stderr.write(f"\repoch {epoch}/{epochs} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}")
            sys.stderr.flush()

    def clear(self):
        if self.enabled:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def train(setup: Setup, cfg_trainer, metrics) -> Outcome:
    """Train for the configured steps; log to `metrics` (a tracking.MetricBuffer)."""
    model, optimizer, scheduler, batches = setup.model, setup.optimizer, setup.scheduler, setup.batches
    splits, normalise, device, precision = setup.splits, setup.normalise, setup.device, setup.precision
    steps_per_epoch = len(batches)
    total_steps = cfg_trainer.steps or cfg_trainer.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    eval_interval = cfg_trainer.eval_every * steps_per_epoch
    val_x, val_y = splits.val_x.to(device), splits.val_y.to(device)
    progress = Progress()
    log.info("training %d steps (%d epochs of %d steps, batch %d) on %s, %s",
             total_steps, epochs, steps_per_epoch, batches.batch_size, device, precision)

    step, final = 0, {}
    window_loss = torch.zeros((), device=device)
    window_correct = torch.zeros((), device=device, dtype=torch.int64)
    window_count = 0
    model.train()
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        epoch_start_step = step
        for x, y in batches.epoch():
            lr = scheduler.get_last_lr()[0]
            with autocast(device, precision):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1

            window_loss += loss.detach()
            window_correct += (logits.detach().argmax(1) == y).sum()
            window_count += 1
            if step % cfg_trainer.log_every == 0 or step == total_steps:
                metrics.add(step, {"train/loss": window_loss / window_count,
                                   "train/acc": window_correct.float() / (window_count * len(y)), "lr": lr})
                window_loss, window_correct, window_count = torch.zeros_like(window_loss), torch.zeros_like(window_correct), 0
                progress.update(epoch, epochs, step - epoch_start_step, steps_per_epoch)
            if step == total_steps:
                break

        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        images = (step - epoch_start_step) * batches.batch_size
        metrics.add(step, {"perf/epoch_time_s": seconds, "perf/images_per_sec": images / seconds, "epoch": epoch})
        if step % eval_interval == 0 or step == total_steps:
            val_loss, val_acc = evaluate(model, val_x, val_y, normalise, cfg_trainer.eval_batch_size, device, precision)
            metrics.add(step, {"val/loss": val_loss, "val/acc": val_acc})
        progress.clear()
        for key, value, _ in metrics.flush():
            final[key] = value
        log.info("epoch %d/%d step %d: %s", epoch, epochs, step, _summary(final, images / seconds))
        if not math.isfinite(final["train/loss"]):
            log.warning("training loss is %s at step %d: the run diverged, stopping", final["train/loss"], step)
            return Outcome("diverged", step, final)
        if step == total_steps:
            break

    test_loss, test_acc = evaluate(model, splits.test_x.to(device), splits.test_y.to(device), normalise,
                                   cfg_trainer.eval_batch_size, device, precision)
    metrics.add(step, {"test/loss": test_loss, "test/acc": test_acc})
    for key, value, _ in metrics.flush():
        final[key] = value
    log.info("test: loss %.4f, accuracy %.4f", final["test/loss"], final["test/acc"])
    return Outcome("finished", step, final)


def _summary(final: dict, images_per_sec: float) -> str:
    parts = [f"train loss {final['train/loss']:.4f} acc {final['train/acc']:.4f}"]
    if "val/loss" in final:
        parts.append(f"val loss {final['val/loss']:.4f} acc {final['val/acc']:.4f}")
    parts.append(f"{images_per_sec:,.0f} img/s")
    return ", ".join(parts)
