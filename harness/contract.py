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

# The MLflow UI shows a run's metric sections (the name up to its last "/") in alphabetical order:
# every metric but the per-layer ones lives under test/, train/ or val/, and "weights" sorts after
# them, so a run's page opens on loss, accuracy and the invariance scores.
TRAIN_LOSS, TRAIN_ACC, LR, EPOCH = "train/loss", "train/acc", "train/lr", "train/epoch"
VAL_LOSS, VAL_ACC = "val/loss", "val/acc"
TEST_LOSS, TEST_ACC = "test/loss", "test/acc"
EPOCH_TIME, IMAGES_PER_SEC = "train/epoch_time_s", "train/images_per_sec"
STARTUP = "train/startup_"  # + <phase>_s: seconds before training (harness.app)
TIMINGS = (EPOCH_TIME, IMAGES_PER_SEC, STARTUP)  # prefixes of what differs between two runs of one job
GRAD_NORM = "weights/grad_norm/"  # + NNN_<layer>
GRAD_NORM_TOTAL = GRAD_NORM + "total"
SHIFT_CONSISTENCY, SHIFT_CONSISTENCY_SE, SHIFT_INSTABILITY, SHIFT_PROB_CHANGE = (
    "shift_consistency", "shift_consistency_se", "shift_instability_1px", "shift_prob_change_1px")  # after val/, test/
ACC_AT = "test/acc_at_"  # + shift or a family: test accuracy at each point of its grid
SHIFT_ACC_DX = ACC_AT + "shift"  # at step dx + max
INVARIANCE_FAMILIES = ("rotation", "scale", "illumination")  # the invariance probes beyond shifts
GEOMETRIC_FAMILIES = ("rotation", "scale")  # the ones augment=geometric trains on
CONSISTENCY = "consistency"  # <family>_consistency and <family>_consistency_se, after val/ or test/
LANDSCAPE_LOSS_VARIATION = "train/landscape_loss_variation"
LANDSCAPE_GRAD_PREDICTIVENESS = "train/landscape_grad_predictiveness"


def family_acc(family: str) -> str:
    """Test accuracy at each point of the family's grid (step = index)."""
    return ACC_AT + family


# How older stores named the metrics that moved (old name or prefix -> new; grad_norm/ until
# 2026-12-03, the rest until 2026-12-05): analysis reads either.
RENAMED = {"lr": LR, "epoch": EPOCH, "perf/epoch_time_s": EPOCH_TIME, "perf/images_per_sec": IMAGES_PER_SEC,
           "shift/acc_dx": SHIFT_ACC_DX, "landscape/loss_variation": LANDSCAPE_LOSS_VARIATION,
           "landscape/grad_predictiveness": LANDSCAPE_GRAD_PREDICTIVENESS,
           **{f"{family}/acc_at": family_acc(family) for family in INVARIANCE_FAMILIES}}
RENAMED_PREFIXES = {"perf/startup_": STARTUP, "grad_norm/": GRAD_NORM}


def current_name(key: str) -> str:
    """A metric's name as the harness writes it now, from the name a store holds."""
    if key in RENAMED:
        return RENAMED[key]
    for old, new in RENAMED_PREFIXES.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


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
