"""The report's figures, each drawn from a tidy frame (analysis.frames) with seaborn, and
registered here by name; a study (analysis.studies) names the figures it shows.

A figure whose study axis the selection does not vary raises Skip with the reason; the
report lists it as a note. Every figure is FIGSIZE at DPI, labelled for a reader who did
not run the sweep: units on the axes, a title saying what is compared, human legend names.
Each figure's file is <number>_<name>, its number its place in FIGURES (the list in docs/studies.md).
"""

from dataclasses import dataclass
from typing import Callable

from analysis.figures.common import DPI, FIGSIZE, Skip, run_title  # noqa: F401 (the figures' API)
from analysis.figures.curves import error_vs_depth, landscape, optimizers, regularisation, training_curves
from analysis.figures.gradients import first_layer_gradient, grad_heatmap, grad_vs_layer
from analysis.figures.invariance import downsampling, invariance, shift_invariance


@dataclass(frozen=True)
class Figure:
    name: str
    draw: Callable  # (history, runs, layers) -> (matplotlib figure, finding sentence); raises Skip
    caption: str

    @property
    def stem(self) -> str:
        """The figure's file name without suffix, numbered as docs/studies.md lists the figures."""
        return f"{NUMBERS[self.name]}_{self.name}"


FIGURES = [
    Figure("training_curves", training_curves, "Training loss and validation error against step; colour is depth, panels are residual/plain (and BatchNorm on/off)."),
    Figure("grad_vs_layer", grad_vs_layer, "Gradient L2 norm of each conv/linear layer from input to output, at initialisation (solid) and at the last logged step."),
    Figure("grad_heatmap", grad_heatmap, "Gradient norm of each conv layer (rows, input at the top) over training steps (columns), one log colour scale for all panels."),
    Figure("error_vs_depth", error_vs_depth, "Final test error against depth, one line per arm, from 0 (bars: ±1 sd over seeds where repeated)."),
    Figure("optimizers", optimizers, "Training loss by optimiser (band: ±1 sd across seeds where repeated)."),
    Figure("shift_invariance", shift_invariance, "Left: shift consistency and one-pixel instability by training augmentation. Right: test accuracy against horizontal shift."),
    Figure("landscape", landscape, "Loss variation and gradient predictiveness along the gradient direction over training, BatchNorm on vs off."),
    Figure("first_layer_gradient", first_layer_gradient, "Gradient L2 norm of the first conv layer at initialisation (step 0) against depth, one line per residual/BatchNorm arm."),
    Figure("downsampling", downsampling, "Test-set shift consistency by downsampling (strided convolution, max, average and blur pooling), zero against circular padding; bars: ±1 sd across seeds where repeated."),
    Figure("invariance", invariance, "Left: test-set consistency under shifts, rotations, scalings and illumination changes by training augmentation. Right: test accuracy against rotation angle."),
    Figure("regularisation", regularisation, "Training accuracy (last 10% of steps, augmented batches) minus test accuracy, by dropout and weight decay."),
]
BY_NAME = {figure.name: figure for figure in FIGURES}
NUMBERS = {figure.name: number for number, figure in enumerate(FIGURES, 1)}
