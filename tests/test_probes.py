"""Probes against independent computations and cases with known answers."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.app import build
from harness.training.batches import Normalise
from harness.models.resnet import CifarResNet
from harness.probes import GradNorms, Subject, landscape_probe, shift_scores
from harness.probes.invariance import family_scores, stratified_sample
from harness.probes.grad_norms import layers_in_forward_order
from harness.tracking.store import MetricBuffer, open_experiment
from harness.training.train import train

from conftest import SYNTHETIC, compose_config


def forward_order(model, x):
    """Modules with their own parameters, in the order a forward pass runs them (via hooks)."""
    order = []
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m))
             for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    model(x)
    for h in hooks:
        h.remove()
    return order


def test_grad_norms_match_per_parameter_norms_in_forward_order():
    torch.manual_seed(0)
    model = CifarResNet(8, shortcut="B")
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    F.cross_entropy(model(x), y).backward()
    probe = GradNorms(Subject(model, x[:2], 10), every=1, dense=0)
    metrics = probe.after_backward(0)

    modules = forward_order(model, x)
    assert [m for _, m in probe.layers] == modules  # every layer with weights, forward order
    names = [k for k in metrics if k != "weights/grad_norm/total"]
    assert names == sorted(names)  # the index prefix sorts like the forward order
    for (key, value), module in zip([(k, metrics[k]) for k in names], modules):
        expected = torch.sqrt(sum(p.grad.norm() ** 2 for p in module.parameters(recurse=False)))
        assert torch.allclose(value, expected, rtol=1e-5), key
    total = torch.sqrt(sum(p.grad.norm() ** 2 for p in model.parameters()))
    assert torch.allclose(metrics["weights/grad_norm/total"], total, rtol=1e-5)
    assert names[0] == "weights/grad_norm/000_stem.conv" and names[-1] == f"weights/grad_norm/{len(modules) - 1:03d}_fc"


def test_grad_norm_schedule_logs_init_dense_then_sparse():
    example = torch.randn(2, 3, 32, 32)
    probe = GradNorms(Subject(CifarResNet(8), example, 10), every=50, dense=5)
    assert [s for s in range(201) if probe.due(s)] == [0, 1, 2, 3, 4, 50, 100, 150, 200]
    assert not any(GradNorms(Subject(CifarResNet(8), example, 10), every=0, dense=5).due(s) for s in range(10))


class WithGate(CifarResNet):
    """A model that adds a module with parameters between the stages: no list to update."""

    def __init__(self):
        super().__init__(8)
        self.gate = nn.Conv2d(32, 32, 1)

    def forward(self, x):
        x = nn.functional.relu(self.stem(x))
        x = self.stage2(self.stage1(x))
        x = self.stage3(self.gate(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def test_a_module_a_model_adds_is_a_layer_in_its_forward_place():
    torch.manual_seed(0)
    model = WithGate()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    names = [name for name, _ in layers_in_forward_order(model, x[:2])]
    assert names.index("stage2.block1.bn2") < names.index("gate") < names.index("stage3.block1.conv1")
    assert model.training  # the discovery pass leaves the mode as it found it
    F.cross_entropy(model(x), y).backward()
    probe = GradNorms(Subject(model, x[:2], 10), every=1, dense=0)
    metrics = probe.after_backward(0)
    gate = next(key for key in metrics if key.endswith("_gate"))
    assert torch.allclose(metrics[gate], torch.sqrt(model.gate.weight.grad.norm() ** 2 + model.gate.bias.grad.norm() ** 2))
    assert "gate,Conv2d,1056" in probe.layer_table()


class CircularInvariant(nn.Module):
    """Circular-padded convolutions, then global average pooling: exactly invariant to rolls."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, padding_mode="circular")
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, padding_mode="circular")
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


class OnePixel(nn.Module):
    """Looks at the top-left pixel only: any shift changes what it sees."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 5)

    def forward(self, x):
        return self.fc(x[:, :, 0, 0])


def shift_data(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 5, (n,), generator=g)
    return x, y, Normalise(torch.full((3,), 0.5), torch.full((3,), 0.25), "cpu")


def test_circularly_invariant_model_scores_perfectly():
    torch.manual_seed(0)
    x, y, norm = shift_data()
    scores, curve = shift_scores(CircularInvariant(), x, y, norm, 4, "circular", 128)
    assert scores["shift_consistency"].item() == 1.0 and scores["shift_consistency_se"].item() == 0.0
    assert scores["shift_instability_1px"].item() == 0.0
    assert scores["shift_prob_change_1px"].item() < 1e-5
    assert torch.allclose(curve, curve[4].expand(9))  # the same accuracy at every shift


class ColumnParity(nn.Module):
    """Class = parity of the column holding the most mass (the first column on a flat image):
    its answer to every shift can be worked out by hand."""

    def forward(self, x):
        column = x.sum((1, 2)).argmax(1)
        return F.one_hot(column % 2, 2).float() * 10


def one_bright_pixel(columns, size=16):
    x = torch.zeros(len(columns), 1, size, size, dtype=torch.uint8)
    x[torch.arange(len(columns)), 0, size // 2, torch.tensor(columns)] = 255
    return x


def plain_normalise():
    return Normalise(torch.zeros(1), torch.ones(1), "cpu")


@pytest.mark.parametrize("mode", ["circular", "translate"])
def test_a_position_dependent_model_scores_what_is_worked_out_by_hand(mode):
    columns = [4, 5, 6, 7, 8, 9, 10, 11]  # away from the border: translate moves them as roll does
    x, y = one_bright_pixel(columns), torch.tensor(columns) % 2
    # max 1: the 9 shifts put the pixel in columns c-1, c, c+1 (three rows each), so 6 predictions
    # fall in one class and 3 in the other: P(two shifts agree) = (6^2 + 3^2) / 9^2 = 5/9
    scores, curve = shift_scores(ColumnParity(), x, y, plain_normalise(), 1, mode, 7)
    assert scores["shift_consistency"].item() == pytest.approx(5 / 9)
    assert scores["shift_consistency_se"].item() == 0  # every image scores the same
    assert scores["shift_instability_1px"].item() == 1  # (1, 1) moves the pixel one column
    # the unshifted class's probability drops from e^10 / (e^10 + 1) to 1 / (e^10 + 1): by tanh(5)
    assert scores["shift_prob_change_1px"].item() == pytest.approx(np.tanh(5))
    assert curve.tolist() == [0, 1, 0]  # right only where the pixel stays in its column
    # max 2: columns c-2 ... c+2, three of the parity of c and two of the other, in 5 rows
    scores, curve = shift_scores(ColumnParity(), x, y, plain_normalise(), 2, mode, 64)
    assert scores["shift_consistency"].item() == pytest.approx((15**2 + 10**2) / 25**2)
    assert curve.tolist() == [1, 0, 1, 0, 1]


def test_consistency_standard_error_is_the_spread_across_images():
    bright = one_bright_pixel([6] * 5)
    flat = torch.full((3, 1, 16, 16), 7, dtype=torch.uint8)  # every column alike: always class 0
    x = torch.cat([bright, flat])
    scores, _ = shift_scores(ColumnParity(), x, torch.zeros(8, dtype=torch.int64), plain_normalise(), 1, "circular", 20)
    per_image = np.array([5 / 9] * 5 + [1.0] * 3)
    assert scores["shift_consistency"].item() == pytest.approx(per_image.mean())
    assert scores["shift_consistency_se"].item() == pytest.approx(per_image.std(ddof=1) / np.sqrt(8))


def test_stratified_sample_of_a_class_sorted_split():
    labels = torch.tensor([0] * 100 + [1] * 100 + [2] * 50)  # stored class by class, as an image folder
    sample = stratified_sample(labels, 50, seed=3)
    assert torch.bincount(labels[sample]).tolist() == [20, 20, 10]
    assert torch.equal(sample, sample.sort().values) and len(set(sample.tolist())) == 50
    assert torch.equal(sample, stratified_sample(labels, 50, seed=3))
    assert not torch.equal(sample, stratified_sample(labels, 50, seed=4))
    uneven = stratified_sample(torch.tensor([0] * 7 + [1] * 7 + [2] * 7), 10, seed=0)
    assert sorted(torch.bincount(torch.tensor([0] * 7 + [1] * 7 + [2] * 7)[uneven]).tolist()) == [3, 3, 4]
    assert len(stratified_sample(labels, 1000, seed=0)) == 250  # all of it


def test_shift_zero_is_the_plain_accuracy_and_results_repeat():
    torch.manual_seed(0)
    model = CifarResNet(8, num_classes=5).eval()
    x, y, norm = shift_data()
    first = shift_scores(model, x, y, norm, 3, "translate", 64)
    second = shift_scores(model, x, y, norm, 3, "translate", 100)
    with torch.no_grad():
        plain = (model(norm(x)).argmax(1) == y).double().mean()
    assert first[1][3].item() == plain.item()
    assert torch.equal(first[1], second[1])  # the batch size changes nothing
    assert first[0]["shift_consistency"].item() == second[0]["shift_consistency"].item()


def test_landscape_probe_is_zero_at_eta_zero_and_restores_everything():
    torch.manual_seed(0)
    model = CifarResNet(8)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    F.cross_entropy(model(x), y).backward()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    metrics = landscape_probe(model, lambda: F.cross_entropy(model(x), y), [0.0])
    assert metrics["train/landscape_loss_variation"].item() == 0.0
    assert metrics["train/landscape_grad_predictiveness"].item() == 0.0
    moved = landscape_probe(model, lambda: F.cross_entropy(model(x), y), [0.05, 0.1, 0.2])
    assert moved["train/landscape_loss_variation"].item() > 0
    for key, value in model.state_dict().items():  # weights and BN running statistics
        assert torch.equal(value, state[key]), key
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))


def landscape_by_hand(model, x, y, etas):
    """Santurkar et al.'s loss variation and gradient predictiveness, computed apart from the
    probe, in fp32, on a copy."""
    model = copy.deepcopy(model)
    params = list(model.parameters())
    g = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    losses, differences = [], []
    for eta in etas:
        with torch.no_grad():
            moved = copy.deepcopy(model)
            for p, gp in zip(moved.parameters(), g):
                p -= eta * gp
        loss = F.cross_entropy(moved(x), y)
        g_eta = torch.autograd.grad(loss, list(moved.parameters()))
        losses.append(loss.item())
        differences.append(torch.sqrt(sum((a - b).pow(2).sum() for a, b in zip(g, g_eta))).item())
    return max(losses) - min(losses), max(differences)


def test_landscape_probe_runs_in_fp32_after_a_bf16_training_step():
    torch.manual_seed(0)
    model = CifarResNet(8)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the training step's own pass
        loss = F.cross_entropy(model(x).float(), y)
    loss.backward()
    etas = [1e-3, 4e-3]  # a fraction of a learning rate of 0.1, where bf16 rounds steps away
    probed = landscape_probe(model, lambda: F.cross_entropy(model(x), y), etas)
    variation, predictiveness = landscape_by_hand(model, x, y, etas)
    assert probed["train/landscape_loss_variation"].item() == pytest.approx(variation, rel=1e-3)
    assert probed["train/landscape_grad_predictiveness"].item() == pytest.approx(predictiveness, rel=1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what the probe measured before: rounding
        in_bf16 = landscape_probe(model, lambda: F.cross_entropy(model(x).float(), y), etas)
    assert in_bf16["train/landscape_grad_predictiveness"].item() == pytest.approx(predictiveness, rel=1e-3)  # autocast is off inside


def trained_weights(tmp_path, landscape_every):
    cfg = compose_config("data=synthetic", "trainer=smoke", "model.depth=8", "data.train_size=512", "data.test_size=64",
                         "data.val_size=64", "trainer.device=cpu", "trainer.steps=6",
                         f"probes.landscape.every={landscape_every}", "probes.shift.images=0", f"paths.runs={tmp_path}")
    setup = build(cfg)
    client, experiment_id = open_experiment(f"sqlite:///{tmp_path}/l.db", "landscape")
    buffer = MetricBuffer(client, client.create_run(experiment_id).info.run_id)
    train(setup, cfg.trainer, buffer)
    return setup.model.state_dict(), client, buffer.run_id


def test_landscape_probe_leaves_the_training_trajectory_bit_identical(tmp_path):
    without, _, _ = trained_weights(tmp_path, landscape_every=0)
    with_probe, client, run_id = trained_weights(tmp_path, landscape_every=2)
    assert [m.step for m in client.get_metric_history(run_id, "train/landscape_loss_variation")] == [0, 2, 4]
    for key in without:
        assert torch.equal(without[key], with_probe[key]), key


class CentrePixel(nn.Module):
    """Looks at the centre pixel only, which rotating or scaling about the centre leaves in place."""

    def __init__(self, pixel=(7, 7)):
        super().__init__()
        self.pixel = pixel
        self.fc = nn.Linear(3, 5)

    def forward(self, x):
        return self.fc(x[:, :, self.pixel[0], self.pixel[1]])


class Standardised(nn.Module):
    """Standardises each image by its own mean and spread: blind to brightness and contrast."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 15 * 15, 5)

    def forward(self, x):
        x = x.flatten(1)
        return self.fc((x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True))


class MeanBrightness(nn.Module):
    def forward(self, x):
        return F.one_hot((x.mean((1, 2, 3)) * 5).long().clamp(0, 4), 5).float()


def invariance_config(**values):
    from omegaconf import OmegaConf

    return OmegaConf.create({"rotation": 15.0, "scale": 0.2, "brightness": 0.2, "contrast": 0.2, **values})


@pytest.mark.parametrize("family", ["rotation", "scale"])
def test_a_model_that_reads_the_centre_is_exactly_rotation_and_scale_invariant(family):
    torch.manual_seed(0)
    x = torch.randint(0, 256, (120, 3, 15, 15), dtype=torch.uint8)
    y = torch.randint(0, 5, (120,))
    norm = Normalise(torch.full((3,), 0.5), torch.full((3,), 0.25), "cpu")
    scores, accuracy_at = family_scores(CentrePixel(), family, invariance_config(), x, y, norm, 100, 5)
    assert scores[f"{family}_consistency"].item() == 1.0 and scores[f"{family}_consistency_se"].item() == 0
    assert torch.allclose(accuracy_at, accuracy_at[len(accuracy_at) // 2].expand_as(accuracy_at))
    corner, _ = family_scores(CentrePixel((1, 1)), family, invariance_config(), x, y, norm, 100, 5)
    assert corner[f"{family}_consistency"].item() < 0.8  # what a corner sees moves


def test_a_standardising_model_is_exactly_illumination_invariant():
    torch.manual_seed(0)
    x = torch.randint(70, 181, (120, 3, 15, 15), dtype=torch.uint8)  # no brightness or contrast change clips
    y = torch.randint(0, 5, (120,))
    norm = Normalise(torch.zeros(3), torch.ones(3), "cpu")
    scores, accuracy_at = family_scores(Standardised(), "illumination", invariance_config(), x, y, norm, 256, 5)
    assert scores["illumination_consistency"].item() == 1.0 and accuracy_at.shape == (9,)
    assert torch.allclose(accuracy_at, accuracy_at[4].expand(9))
    # a model that reads the mean brightness, in fifths of the range: +-0.2 moves every image a class
    # up or down, so of the 9 predictions 3 fall in each of 3 classes: consistency 3 * (3/9)^2 = 1/3
    by_mean, _ = family_scores(MeanBrightness(), "illumination", invariance_config(), x, y, norm, 256, 5)
    assert by_mean["illumination_consistency"].item() == pytest.approx(1 / 3)


def trained(tmp_path, *overrides):
    cfg = compose_config(*SYNTHETIC, "data.train_size=1024", "data.val_size=0",
                         "data.test_size=200", "trainer=smoke", "trainer.steps=40", "trainer.device=cpu",
                         "trainer.precision=fp32", "model.depth=8", "probes=off", f"paths.runs={tmp_path}", *overrides)
    setup = build(cfg)
    client, experiment_id = open_experiment(f"sqlite:///{tmp_path}/i.db", "invariance")
    train(setup, cfg.trainer, MetricBuffer(client, client.create_run(experiment_id).info.run_id))
    return setup


def test_circular_padding_without_downsampling_is_exactly_shift_invariant_once_trained(tmp_path):
    """The lectures' known answer: convolutions are equivariant to circular shifts when they pad
    circularly, and global average pooling makes the network invariant, unless it subsamples."""
    exact = trained(tmp_path, "model.downsample=none", "model.padding=circular")
    x, y = exact.splits.test_x, exact.splits.test_y
    scores, curve = shift_scores(exact.model, x, y, exact.normalise, 4, "circular", 512)
    with torch.no_grad():
        predicted = exact.model.eval()(exact.normalise(x)).argmax(1)
    assert predicted.unique().numel() >= 3  # a real classifier, not a constant one
    assert scores["shift_consistency"].item() == 1.0 and scores["shift_instability_1px"].item() == 0.0
    assert torch.equal(curve, curve[4].expand(9))
    strided = trained(tmp_path, "model.downsample=stride", "model.padding=circular")
    scores, _ = shift_scores(strided.model, x, y, strided.normalise, 4, "circular", 512)
    assert scores["shift_consistency"].item() < 0.99  # stride 2 twice: invariant to shifts of 4 only


def test_a_new_probe_is_a_module_and_a_config_entry_with_no_edit_to_the_harness(runs_dir):
    """tests/probe_example.py, added on the command line: the loop calls it, its metric and its
    table land in the run, its own check refuses a bad setting in one line."""
    from mlflow.artifacts import download_artifacts

    from conftest import all_runs, local_store, run_cli
    from probe_example import METRIC, TABLE

    probe = "+probes.activation_stats._target_=tests.probe_example.ActivationStats"
    fast = ["data=synthetic", "trainer=smoke", "model.depth=8", "trainer.device=cpu", "trainer.steps=8", "probes=off"]
    result = run_cli(*fast, probe, "+probes.activation_stats.every=3", runs_dir=runs_dir)
    assert result.returncode == 0, result.stderr
    uri = local_store(runs_dir)
    client, (run,) = all_runs(uri)
    table = download_artifacts(run_id=run.info.run_id, artifact_path=TABLE, tracking_uri=uri)
    first = open(table).read().splitlines()[1]
    assert first == "0,000_stem.conv,stem.conv"
    history = client.get_metric_history(run.info.run_id, METRIC + "000_stem.conv")
    assert [m.step for m in history] == [0, 3, 6] and all(m.value > 0 for m in history)

    refused = run_cli(*fast, probe, "+probes.activation_stats.every=0", runs_dir=runs_dir)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "error: probes.activation_stats.every=0 must be a positive number of steps"]
    unknown = run_cli(*fast, "+probes.nothing._target_=tests.probe_example.TABLE", runs_dir=runs_dir)
    assert unknown.returncode == 2 and "probes.nothing is not a probe" in unknown.stderr
