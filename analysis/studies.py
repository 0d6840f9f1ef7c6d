"""The studies: each is one entry naming its preset (conf/experiment/<preset>.yaml), its claims
(one line each) and its figures (by name, analysis.figures). Adding a study is its preset and
an entry here; `python -m analysis` reports the studies of the preset that launched a sweep.

A claim's arm is {frames column: value}: an axis of contract.AXES or a label column, in the
words of the runs' model_labels (a ResNet's: architecture plain/residual, normalisation
BatchNorm/no BatchNorm); "min"/"max" pick the extreme of that column among the runs."""

import math
from dataclasses import dataclass

from analysis.claims import EXPLODING, VANISHING, Claim
from harness import contract


@dataclass(frozen=True)
class Study:
    name: str  # the heading of its claims table
    preset: str  # conf/experiment/<preset>.yaml, recorded on the sweep's parent run (contract.PRESET)
    claims: tuple
    figures: tuple  # names in analysis.figures.FIGURES, drawn in that list's order
    key: str = ""  # the one figure the results page shows (analysis.results); "": the first of figures
    literature: str = ""  # who states the claims, and at what budget: the results page sets the verdicts beside it

    @property
    def key_figure(self) -> str:
        return self.key or self.figures[0]


PLAIN, RESIDUAL = {"architecture": "plain"}, {"architecture": "residual"}
NO_BN, BN = {"normalisation": "no BatchNorm"}, {"normalisation": "BatchNorm"}
NO_AUG = {"augment": "none"}
DEPTH_FIGURES = ("training_curves", "grad_vs_layer", "grad_heatmap", "error_vs_depth")

STUDIES = [
    Study("Depth and residual connections", "depth_residual", (
        Claim("Plain nets degrade with depth: the deepest trains worse than the shallowest", "final training loss",
              {**PLAIN, "depth": "max"}, ">", {**PLAIN, "depth": "min"}),
        Claim("Residual nets do not degrade with depth: the deepest trains within 5% of the shallowest's loss",
              "final training loss", {**RESIDUAL, "depth": "max"}, "<=", {**RESIDUAL, "depth": "min"}, margin=0.05),
        Claim("At the greatest depth, residual connections make the net train better", "final training loss",
              {**PLAIN, "depth": "max"}, ">", {**RESIDUAL, "depth": "max"}),
    ), DEPTH_FIGURES, "training_curves",
        "He et al. 2016 (Fig. 6, Table 6): plain-56 trains worse than plain-20, ResNet-56 better than ResNet-20, "
        "after 64k iterations of 128 images (about 180 epochs of 45,000) with crops and flips"),
    Study("BatchNorm", "batchnorm", (
        Claim("BatchNorm makes training faster", "final training loss", NO_BN, ">", BN),
        Claim("BatchNorm smooths the loss landscape (Santurkar et al. 2018)", "loss variation", NO_BN, ">", BN),
    ), (*DEPTH_FIGURES, "landscape", "first_layer_gradient"),  # the depth figures draw where depth is swept too
        "landscape", "Ioffe and Szegedy 2015 (faster training); Santurkar et al. 2018, Fig. 4 (a smoother loss "
        "landscape along the gradient, VGG on CIFAR-10 over full training runs)"),
    Study("Optimisers", "optimizers", tuple(
        Claim(f"{name} trains faster than plain SGD", "final training loss", {"optimizer": "sgd"}, ">", {"optimizer": choice})
        for name, choice in (("Momentum", "momentum"), ("Nesterov momentum", "nesterov"), ("RMSProp", "rmsprop"),
                             ("Adam", "adam"))), ("grad_heatmap", "optimizers"), "optimizers",
        "the lectures (CS231n, optimisation): momentum and adaptive methods reach a lower loss than plain SGD "
        "in the same number of steps, each at a learning rate suited to it"),
    Study("Augmentation and shift invariance", "augmentation", (
        Claim("Trained CNNs are only \"sort of\" shift-invariant", "shift consistency", 1.0, ">", NO_AUG),
        *[Claim(f"Training with {name} makes a CNN more shift-invariant", "shift consistency", {"augment": choice}, ">",
                NO_AUG) for name, choice in (("random crops", "crop"), ("crops and flips", "crop_flip"))],
    ), ("grad_heatmap", "shift_invariance"), "shift_invariance",
        "Azulay and Weiss 2019; Zhang 2019: CNNs trained on natural images are far from shift-invariant, "
        "and augmentation helps only partly"),
    Study("Gradient flow at initialisation", "vanishing", (
        Claim("Without BatchNorm, the gradient vanishes toward the input of a deep plain net",
              "log10 gradient ratio", math.log10(VANISHING), ">", {**PLAIN, "depth": "max", **NO_BN}, trained=False),
        Claim("With BatchNorm, the gradient explodes toward the input of a deep plain net instead",
              "log10 gradient ratio", {**PLAIN, "depth": "max", **BN}, ">", math.log10(EXPLODING), trained=False),
        Claim("Residual connections let the gradient reach the first layers", "|log10 gradient ratio|",
              {**PLAIN, "depth": "max"}, ">", {**RESIDUAL, "depth": "max"}, trained=False),
    ), ("grad_vs_layer", "grad_heatmap", "first_layer_gradient"), "first_layer_gradient",
        "the lectures (vanishing gradients in deep plain nets); Yang et al. 2019 (BatchNorm makes the gradient "
        "explode with depth at initialisation); He et al. 2016 (identity shortcuts carry the gradient)"),
    Study("Downsampling and padding", "downsampling", (
        *[Claim(f"Blur before subsampling is more shift-invariant than {name} (Zhang 2019)", "shift consistency",
                {"downsample": "blurpool"}, ">", {"downsample": choice})
          for name, choice in (("strided convolution", "stride"), ("max pooling", "maxpool"))],
        Claim("Circular padding makes a CNN more shift-invariant", "shift consistency",
              {"padding": "circular"}, ">", {"padding": "zeros"}),
        Claim("With circular padding and no downsampling, a CNN is exactly invariant to circular shifts",
              "shift consistency", 1.0, "<=", {"padding": "circular", "downsample": "none"}, trained=False),
    ), ("grad_heatmap", "shift_invariance", "downsampling", "invariance"),  # by augmentation, where that is swept too
        "downsampling", "Zhang 2019 (Making convolutional networks shift-invariant again): blur pooling raises "
        "shift consistency over strided convolution and max pooling, on ImageNet and CIFAR-10"),
    Study("Invariance beyond shifts", "invariance", (
        *[Claim(f"CNNs are not invariant to {family} unless trained to be", f"{family} consistency", 1.0, ">", NO_AUG)
          for family in contract.INVARIANCE_FAMILIES],
        *[Claim(f"Training with rotations and scaling makes a CNN more {family}-invariant", f"{family} consistency",
                {"augment": "geometric"}, ">", NO_AUG) for family in contract.GEOMETRIC_FAMILIES],
    ), ("grad_heatmap", "shift_invariance", "invariance"), "invariance",
        "Engstrom et al. 2019 (rotations and translations fool CNNs); the lectures: invariance comes from "
        "training data, not from the architecture"),
    Study("Regularisation", "regularisation", (
        Claim("Dropout regularises: it narrows the gap between training and test accuracy", "generalisation gap",
              {"dropout": "min"}, ">", {"dropout": "max"}),
        Claim("Weight decay regularises", "generalisation gap", {"weight_decay": "min"}, ">", {"weight_decay": "max"}),
        Claim("Gaussian pixel jitter regularises", "generalisation gap", {"augment": "crop_flip"}, ">", {"augment": "jitter"}),
    ), ("grad_heatmap", "regularisation"), "regularisation",
        "Srivastava et al. 2014 (dropout); Krogh and Hertz 1992 (weight decay); Bishop 1995 (training with "
        "noise is a regulariser); all over full training runs"),
]


def of_preset(preset: str | None) -> list:
    """The studies of the preset(s) that launched a sweep ("optimizers,seeds": both); a sweep
    without a preset, or with none that has a study (seeds alone), is read for every study: each
    figure and claim then appears where the runs varied its axes."""
    presets = set((preset or "").split(","))
    return [study for study in STUDIES if study.preset in presets] or list(STUDIES)
