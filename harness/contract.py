"""What the harness writes to MLflow and analysis reads back: tag names, metric names and the
axes a study varies. Both sides import these; neither spells them out again."""

# ---------------------------------------------------------------- tags

EXPERIMENT_KIND = "mlflow.experimentKind"  # on each experiment: which view the MLflow UI (3.x) opens
MODEL_TRAINING = "custom_model_development"  # its model-training view (runs, charts), not GenAI traces
UI_MODEL_TRAINING = "workflowType=machine_learning"  # the same view as a URL parameter: the 3.17 UI's
# GenAI / Model training switch, which defaults to GenAI, wins over the experiment's tag

KIND = "kind"  # "sweep" on a sweep's parent run
KIND_SWEEP = "sweep"
PARENT = "mlflow.parentRunId"
RUN_NAME = "mlflow.runName"
SWEEP_ID = "sweep_id"  # <date>/<time>-<random>, on the parent and every job
JOB_NUM = "job_num"
OVERRIDES = "overrides"
OUTCOME = "outcome"  # finished, diverged, failed, killed (harness.jobs.outcome.Outcome); running while it runs
DIVERGED = "diverged"  # "true" or "false"
ERROR = "error"
KILLED_BY = "killed_by"  # on a run ended KILLED by someone other than its own process
NOTE = "mlflow.note.content"  # a run's description, shown at the top of its page in the MLflow UI
MODEL_LABELS = "model_labels"  # on each job: JSON, how its model family names its runs (see RESNET_LABELS)
PRESET = "preset"  # on a sweep's parent: the +experiment preset that launched it, e.g. depth_residual
CHOICE = "choice."  # + group: the config file Hydra picked for the group, e.g. choice.optim=momentum


# A model family's words for its axes: each label column of analysis' frames is made from one
# axis (a short name of AXES), value (lower-case, as logged) -> word. A run without the tag was
# written before it existed, by a ResNet.
RESNET_LABELS = {"family": "ResNet", "columns": {
    "architecture": {"axis": "residual", "values": {"true": "residual", "false": "plain"}},
    "normalisation": {"axis": "batchnorm", "values": {"true": "BatchNorm", "false": "no BatchNorm"}}}}


def choice_tag(group: str) -> str:
    return CHOICE + group


# ---------------------------------------------------------------- metrics

TRAIN_LOSS, TRAIN_ACC, LR = "train/loss", "train/acc", "lr"
VAL_LOSS, VAL_ACC = "val/loss", "val/acc"
TEST_LOSS, TEST_ACC = "test/loss", "test/acc"
EPOCH_TIME, IMAGES_PER_SEC = "perf/epoch_time_s", "perf/images_per_sec"
# + NNN_<layer>. The MLflow UI shows a run's metric sections in alphabetical order: "weights"
# sorts after train/, val/ and test/, so the headline curves come before the per-layer ones.
GRAD_NORM = "weights/grad_norm/"
GRAD_NORM_BEFORE = "grad_norm/"  # how stores written before 2026-12-03 named them
GRAD_NORM_TOTAL = GRAD_NORM + "total"
SHIFT_CONSISTENCY, SHIFT_CONSISTENCY_SE, SHIFT_INSTABILITY, SHIFT_PROB_CHANGE = (
    "shift_consistency", "shift_consistency_se", "shift_instability_1px", "shift_prob_change_1px")  # after val/, test/
SHIFT_ACC_DX = "shift/acc_dx"  # at step dx + max
INVARIANCE_FAMILIES = ("rotation", "scale", "illumination")  # the invariance probes beyond shifts
GEOMETRIC_FAMILIES = ("rotation", "scale")  # the ones augment=geometric trains on
CONSISTENCY = "consistency"  # <family>_consistency and <family>_consistency_se, after val/ or test/
FAMILY_ACC = "/acc_at"  # <family>/acc_at: test accuracy at each point of the family's grid (step = index)
LANDSCAPE_LOSS_VARIATION = "landscape/loss_variation"
LANDSCAPE_GRAD_PREDICTIVENESS = "landscape/grad_predictiveness"

HEADLINE = (TRAIN_LOSS, VAL_ACC, TEST_ACC, f"test/{SHIFT_CONSISTENCY}")  # what a reader looks for first
CLASSES = "classes"  # tag: how many classes the job's dataset has (chance accuracy is 1 / classes)



def invariance_grid(family: str, cfg) -> list:
    """The family's transform parameters, identity included, in the order of <family>/acc_at's
    steps; `cfg`: probes.invariance (rotation in degrees, scale, brightness, contrast)."""
    if family == "rotation":
        return [(cfg.rotation * k / 3,) for k in range(-3, 4)]
    if family == "scale":
        return [(1 + cfg.scale * k / 2,) for k in range(-2, 3)]
    return [(b, c) for b in (-cfg.brightness, 0.0, cfg.brightness) for c in (1 - cfg.contrast, 1.0, 1 + cfg.contrast)]

# ---------------------------------------------------------------- artifacts

VERDICTS = "\n\nVerdicts: "  # in a sweep parent's description (NOTE): what python -m analysis replaces
CLAIMS_TABLE = "claims_table.json"  # on a sweep's parent, written by python -m analysis: the verdicts (log_table)
JOBS_TABLE = "jobs_table.json"  # on a sweep's parent: each job's swept values and headline metrics (log_table)

LAYER_TABLE = "layers.csv"  # index, metric, layer, module, parameters
SHIFT_TABLE = "shift_accuracy.csv"  # split (test), dx, accuracy
SHIFT_SAMPLE = "shift_sample.csv"  # split, index, label: the images the invariance scores are over
INVARIANCE_TABLE = "invariance_accuracy.csv"  # family, point, parameters, accuracy (test split)

# ---------------------------------------------------------------- the axes a study varies

# short name: ("param", config key) or ("choice", config group)
AXES = {
    "depth": ("param", "model.depth"),
    "residual": ("param", "model.residual"),
    "batchnorm": ("param", "model.batchnorm"),
    "optimizer": ("choice", "optim"),
    "augment": ("choice", "augment"),
    "downsample": ("param", "model.downsample"),
    "padding": ("param", "model.padding"),
    "dropout": ("param", "model.dropout"),
    "weight_decay": ("param", "optim.weight_decay"),
    "seed": ("param", "trainer.seed"),
}
