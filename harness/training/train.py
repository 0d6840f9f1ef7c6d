"""The training loop: sample batch, augment, forward, loss, backward, step, log.

Nothing in a step reads a device value on the host: the running loss and accuracy are
device tensors handed to the metric buffer, which reads them all at once at the end of an
epoch (the flush point, where evaluation syncs anyway). Divergence is detected there too.
"""

import functools
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from harness import contract
from harness.training.batches import Normalise, TrainBatches, eval_batches
from harness.jobs.checkpoint import Checkpoints
from harness.jobs.outcome import Outcome
from harness.jobs.signals import Interrupted
from harness.training.compute import Compute
from harness.data import Splits
from harness.probes import Evaluation, Probes
from harness.training.progress import Progress


@dataclass
class Setup:
    """What a job trains with; built by harness.app.build from the config."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    batches: TrainBatches
    splits: Splits
    normalise: Normalise
    compute: Compute
    probes: Probes
    forward: Callable  # what a training step calls: the model, or its torch.compile'd form

    @property
    def device(self) -> torch.device:
        return self.compute.device


@dataclass
class Trained:
    """How training ended, after how many steps."""

    status: Outcome  # finished or diverged
    steps: int
    final: dict = field(default_factory=dict)  # last value of each metric, on the host


@torch.inference_mode()
def evaluate(model, x, y, normalise, batch_size, autocast=nullcontext):
    """(mean cross-entropy, accuracy) over a whole split, as 0-d device tensors."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    for xb, yb in eval_batches(x, y, batch_size):
        with autocast():
            logits = model(normalise(xb))
        loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum")
        correct += (logits.argmax(1) == yb).sum()
    model.train(was_training)
    return loss_sum / len(x), correct.float() / len(x)


class TrainWindow:
    """Training loss and accuracy summed on the device over the steps since the last log point."""

    def __init__(self, device):
        self.loss = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.int64)
        self.steps = self.images = 0

    def add(self, loss, logits, y):
        self.loss += loss.detach()
        self.correct += (logits.detach().argmax(1) == y).sum()
        self.steps += 1
        self.images += len(y)

    def take(self) -> dict:
        """The window's means (device tensors), then start a new window."""
        means = {contract.TRAIN_LOSS: self.loss / self.steps, contract.TRAIN_ACC: self.correct.float() / self.images}
        self.__init__(self.loss.device)
        return means

    def state_dict(self) -> dict:
        return {"loss": self.loss.cpu(), "correct": self.correct.cpu(), "steps": self.steps, "images": self.images}

    def load_state_dict(self, state: dict) -> None:
        self.loss.copy_(state["loss"])
        self.correct.copy_(state["correct"])
        self.steps, self.images = state["steps"], state["images"]


def train(setup: Setup, cfg_trainer, metrics, step_context=nullcontext, checkpoints: Checkpoints | None = None,
          label: str | None = "") -> Trained:
    """Train for the configured steps; log to `metrics` (a tracking.MetricBuffer); show
    progress (harness.training.progress) under `label`, or none if it is None.

    step_context() is entered around each step (harness.training.syncs checks there that no step
    waits for the device). With `checkpoints`, training starts from the saved checkpoint if
    there is one, saves one every checkpoints.every epochs, and on a stop request saves one at
    the next step boundary and raises Interrupted.
    """
    model, scheduler, batches, probes = setup.model, setup.scheduler, setup.batches, setup.probes
    device, normalise, eval_batch = setup.device, setup.normalise, cfg_trainer.eval_batch_size
    mixed = setup.compute.autocast
    steps_per_epoch = len(batches)
    total_steps = cfg_trainer.steps or cfg_trainer.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    val_x, val_y = setup.splits.val_x.to(device), setup.splits.val_y.to(device)
    window = TrainWindow(device)
    progress = Progress(label, total_steps, steps_per_epoch, batches.batch_size, device, cfg_trainer.progress_every)
    step, first_epoch, epoch_step, final = 0, 1, 0, {}
    resumed = checkpoints.load() if checkpoints else None
    if resumed:
        step, first_epoch, epoch_step = resumed["step"], resumed["epoch"], resumed["epoch_step"]
        _restore(setup, window, resumed)
        progress.say("resuming at step %d (epoch %d) from %s", step, first_epoch, checkpoints.path)
    progress.say("training %d steps (%s of %d steps, batch %d) on %s: %s", total_steps,
                 f"{epochs} epoch{'s' if epochs != 1 else ''}", steps_per_epoch, batches.batch_size, device,
                 ", ".join(f"{k} {v}" for k, v in setup.compute.describe().items()))

    def save(epoch, at_step, epoch_start_rng):
        checkpoints.save({"step": step, "epoch": epoch, "epoch_step": at_step, "generator": epoch_start_rng,
                          "window": window.state_dict(), "model": model.state_dict(),
                          "optimizer": setup.optimizer.state_dict(), "scheduler": scheduler.state_dict()})

    model.train()
    with progress.running(step):
        for epoch in range(first_epoch, epochs + 1):
            start, epoch_start_step = time.perf_counter(), step - epoch_step
            epoch_steps = min(steps_per_epoch, total_steps - epoch_start_step)
            epoch_start_rng = batches.generator.get_state()  # what regenerates this epoch's batches
            epoch_batches = batches.epoch(first_batch=epoch_step)
            for _ in range(epoch_steps - epoch_step):
                if checkpoints and checkpoints.stop_signal:
                    metrics.flush(before_sending=lambda: save(epoch, step - epoch_start_step, epoch_start_rng))
                    raise Interrupted(checkpoints.stop_signal)
                with step_context():
                    x, y = next(epoch_batches)
                    lr = scheduler.get_last_lr()[0]
                    loss, logits = train_step(setup, x, y, step, lr, metrics)
                    scheduler.step()
                    step += 1
                    window.add(loss, logits, y)
                    means = window.take() if step % cfg_trainer.log_every == 0 else None
                    if means:
                        metrics.add(step, {**means, contract.LR: lr})
                if means:
                    progress.loss.offer(means[contract.TRAIN_LOSS])  # outside the step: on a CPU it reads
                progress.advance(step)
            if window.steps:  # every epoch ends with a log point
                metrics.add(step, {**window.take(), contract.LR: lr})
            steps_run, epoch_step = epoch_steps - epoch_step, 0

            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
            images_per_sec = steps_run * batches.batch_size / seconds
            metrics.add(step, {contract.EPOCH_TIME: seconds, contract.IMAGES_PER_SEC: images_per_sec, contract.EPOCH: epoch})
            if len(val_x) and (epoch % cfg_trainer.eval_every == 0 or step == total_steps):  # data.val_size=0: none
                with progress.phase(f"epoch {epoch}/{epochs}: validation on {len(val_x):,} images"):
                    val_loss, val_acc = evaluate(model, val_x, val_y, normalise, eval_batch, mixed)
                    metrics.add(step, {contract.VAL_LOSS: val_loss, contract.VAL_ACC: val_acc})
                _probe(probes, progress, f"epoch {epoch}/{epochs}: ", metrics,
                       Evaluation("val", step, val_x, val_y, normalise, eval_batch, metrics.add, mixed))
            # the checkpoint goes between staging the metrics and sending them: whatever happens to
            # the store, a resumed job neither repeats nor misses a point (tracking.MetricBuffer)
            due = checkpoints and checkpoints.due(epoch) and step < total_steps
            checkpoint = (lambda: save(epoch + 1, 0, batches.generator.get_state())) if due else None
            final.update((key, value) for key, value, _ in metrics.flush(before_sending=checkpoint))
            progress.say("epoch %d/%d step %d: %s", epoch, epochs, step, _summary(final, images_per_sec))
            if not math.isfinite(final[contract.TRAIN_LOSS]):
                progress.say("training loss is %s at step %d: the run diverged, stopping", final[contract.TRAIN_LOSS],
                             step, level=logging.WARNING)
                return Trained(Outcome.DIVERGED, step, final)

        final.update(final_test(setup, step, eval_batch, metrics, progress))
    progress.say("test: loss %.4f, accuracy %.4f", final[contract.TEST_LOSS], final[contract.TEST_ACC])
    return Trained(Outcome.FINISHED, step, final)


def _probe(probes: Probes, progress: Progress, prefix: str, metrics, evaluation: Evaluation):
    """The probes on an evaluated split, each announced: they can take longer than the evaluation."""
    for probe, plan in probes.plans(evaluation.split, len(evaluation.y)):
        with progress.phase(f"{prefix}{plan}"):
            metrics.add(evaluation.step, probe.at_evaluation(evaluation))


def _restore(setup: Setup, window: TrainWindow, state: dict) -> None:
    setup.model.load_state_dict(state["model"])
    setup.optimizer.load_state_dict(state["optimizer"])
    setup.scheduler.load_state_dict(state["scheduler"])
    setup.batches.generator.set_state(state["generator"])
    window.load_state_dict(state["window"])


def train_step(setup: Setup, x, y, step: int, lr: float, metrics):
    """Forward, loss, backward, probes, optimiser step; (loss, logits) stay on the device."""
    model, mixed = setup.model, setup.compute.autocast
    if setup.forward is not model:  # compiled: with CUDA graphs, a new step may overwrite the last one's outputs
        torch.compiler.cudagraph_mark_step_begin()
    with mixed():
        logits = setup.forward(x)
        loss = F.cross_entropy(logits.float(), y)
    setup.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    metrics.add(step, setup.probes.after_backward(step, functools.partial(_fp32_loss, model, x, y), lr))
    setup.optimizer.step()
    return loss, logits


def final_test(setup: Setup, step: int, eval_batch: int, metrics, progress: Progress) -> dict:
    """The final evaluation on the test set (used for nothing else), with its invariance scores."""
    device, probes, mixed = setup.device, setup.probes, setup.compute.autocast
    x, y = setup.splits.test_x.to(device), setup.splits.test_y.to(device)
    with progress.phase(f"final test on {len(x):,} images"):
        loss, accuracy = evaluate(setup.model, x, y, setup.normalise, eval_batch, mixed)
        metrics.add(step, {contract.TEST_LOSS: loss, contract.TEST_ACC: accuracy})
    _probe(probes, progress, "", metrics, Evaluation("test", step, x, y, setup.normalise, eval_batch, metrics.add, mixed))
    return {key: value for key, value, _ in metrics.flush()}


def _fp32_loss(model, x, y):
    """The batch's loss for a probe that recomputes it in full precision (the landscape probe)."""
    return F.cross_entropy(model(x), y)


def _summary(final: dict, images_per_sec: float) -> str:
    parts = [f"train loss {final['train/loss']:.4f} acc {final['train/acc']:.4f}"]
    if "val/loss" in final:
        parts.append(f"val loss {final['val/loss']:.4f} acc {final['val/acc']:.4f}")
    parts.append(f"{images_per_sec:,.0f} img/s")
    return ", ".join(parts)
