"""The config schema: every bad value is one line naming it, exit status 2, nothing written;
values that mean false are false."""

import csv
import io
import sys

import pytest
import torch
from mlflow.artifacts import download_artifacts

from harness.app import main
from harness.config import make_model

from conftest import PROJECT_ROOT, all_runs, compose_config, run_cli

# (overrides, what the one line must say): values a new user typed, each once a traceback
# or silently accepted
BAD_VALUES = [
    (["model.batchnorm=maybe"], "model.batchnorm: Value 'maybe' is not a valid bool"),
    (["model.residual=perhaps"], "model.residual: Value 'perhaps' is not a valid bool"),
    (["model.width=abc"], "model.width: Value 'abc'"),
    (["model.width=0"], "model.width=0.0 must be a positive number"),
    (["model.depth=21"], "model.depth=21 is not a CIFAR ResNet depth"),
    (["model.shortcut=C"], "model.shortcut: Invalid value 'C', expected one of [A, B]"),
    (["model.init=fixup", "model.residual=false"], "model.init='fixup' needs model.residual=true"),
    (["model.foo=1"], "model.foo: Key 'foo' not in 'ResNetConfig' (allowed keys: depth, residual"),
    (["+model.foo=1"], "model.foo is not a key of ResNetConfig: use one of depth, residual"),
    (["+probes.shift.every=2"], "probes.shift.every is not a key of ShiftProbeConfig: use one of max, mode"),
    (["trainer.seed=abc"], "trainer.seed: Value 'abc'"),
    (["trainer.epochs=0"], "trainer.epochs=0 must be a positive integer"),
    (["trainer.precision=fp16"], "trainer.precision: Invalid value 'fp16', expected one of [auto, fp32, bf16]"),
    (["trainer.compile=fast"], "trainer.compile='fast' is not one of auto, true, false"),
    (["trainer.threads=0"], "trainer.threads='0' must be auto or a positive integer"),
    (["trainer.device=tpu"], "trainer.device='tpu' is not a device"),
    (["schedule.final=x"], "schedule.final: Value 'x'"),
    (["schedule=onecycle", "schedule.peak=1.5"], "schedule.peak=1.5 must be in (0, 1)"),
    (["schedule.warmup=1"], "schedule.warmup=1.0 must be in [0, 1)"),
    (["optim.momentum=x"], "optim.momentum: Value 'x'"),
    (["optim.momentum=-1"], "optim.momentum=-1.0 must be at least 0"),
    (["optim.lr=0"], "optim.lr=0.0 must be a positive number"),
    (["optim=adam", "optim.betas=[2,3]"], "optim.betas=[2.0, 3.0] must be two numbers in [0, 1)"),
    (["optim=adam", "optim.eps=-1"], "optim.eps=-1.0 must be at least 0"),
    (["optim=rmsprop", "optim.alpha=-1"], "optim.alpha=-1.0 must be at least 0"),
    (["optim=foo"], "optim=foo is not a config choice: use one of adam, adamw, fast"),
    (["data=synthetic", "data.train_size=-5"], "data.train_size=-5 must be at least 1"),
    (["data=synthetic", "data.image_size=100000"], "data.image_size=100000 must be between 12 and 256"),
    (["data=synthetic", "data.test_size=0"], "data.test_size=0 must be at least 1"),
    (["data=synthetic", "data.val_size=5000"], "data.val_size=5000.0 must be smaller than data.train_size=4096"),
    (["data.url=notaurl"], "data.url='notaurl' is not a URL"),
    (["data=imagefolder"], "data.root=None is not set"),
    (["probes.shift.max=100"], "probes.shift.max=100 must be smaller than the 32-pixel images"),
    (["probes.shift.mode=wrap"], "probes.shift.mode: Invalid value 'wrap', expected one of [circular, translate]"),
    (["augment.pad=100"], "augment.pad=100 must be smaller than the 32-pixel images"),
    (["probes.landscape.etas=[]"], "probes.landscape.etas=[] must be a non-empty list"),
    (["experiment=depth_residual"], "To append to your default list use +experiment=depth_residual"),
    (["tracking.uri=./mlruns"], "tracking.uri='./mlruns' is not supported"),
    (["model.depth=[1"], "model.depth=[1: no viable alternative at input '[1'"),
    (["+optimm=adam"], "optimm is not a config group or key: use one of model, data"),
    (["model=null"], "model=null: a config group cannot be set to null"),
    (["data=synthetic", "data.seed=-1"], "data.seed=-1 must be a non-negative integer"),
    (["data=synthetic", "trainer.batch_size=5000"], "trainer.batch_size=5000 is larger than the 3584 training images"),  # 4096 - 1/8 held out
    (["data.train_subset=100000"], "data.train_subset=100000 must be at most the 45000 training images"),
    (["data.val_size=5000", "data.train_subset=45001"], "data.train_subset=45001 must be at most the 45000"),
    (["recipe=he2016", "trainer=smoke"], "recipe=he2016 sets the training length and batch size itself: drop trainer=smoke"),
]


@pytest.mark.parametrize("overrides, says", BAD_VALUES, ids=[" ".join(o) for o, _ in BAD_VALUES])
def test_each_bad_value_is_one_line_and_exit_status_2(overrides, says, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(sys, "argv", ["harness", *overrides, f"paths.runs={tmp_path}"])
    with pytest.raises(SystemExit) as exit_status:
        main()
    assert exit_status.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], lines
    assert list(tmp_path.iterdir()) == []  # no store, no Hydra output folder, nothing


def test_help_lists_what_a_user_picks_from_without_importing_torch(tmp_path):
    import subprocess
    from pathlib import Path

    conf = Path(__file__).resolve().parents[1] / "conf"
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "harness", "--help"], capture_output=True,
                            text=True, timeout=60, cwd=conf.parent)
    assert result.returncode == 0
    assert " torch" not in {line.rsplit("|", 1)[-1].rstrip() for line in result.stderr.splitlines()}  # not imported
    text = result.stdout
    assert "schema" not in text and "hydra/" not in text
    for group in ("model", "data", "augment", "optim", "schedule", "probes", "trainer", "tracking", "recipe"):
        choices = ", ".join(sorted(f.stem for f in (conf / group).glob("*.yaml")))
        assert f"\n  {group}: {choices}\n" in text
    for preset in sorted((conf / "experiment").glob("*.yaml")):
        assert f"\n  {preset.stem}: " in text
    assert "depth_residual: He et al. 2016, Fig. 6: plain nets degrade with depth, residual nets do not." in text
    assert "-m +experiment=NAME" in text and "Without -m a value with a comma is refused." in text

    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "harness.runs", "--help"], capture_output=True,
                            text=True, timeout=60, cwd=conf.parent)
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert result.returncode == 0 and "resume" in result.stdout and not {"torch", "mlflow", "hydra"} & imported


def test_several_values_without_m_say_to_add_it(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(sys, "argv", ["harness", "model.depth=8,20", "data=synthetic", f"paths.runs={tmp_path}"])
    with pytest.raises(SystemExit) as exit_status:
        main()
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_status.value.code == 2 and lines == [
        "error: model.depth=8,20 gives several values, which only a sweep takes: add -m "
        f"(python -m harness -m model.depth=8,20 data=synthetic paths.runs={tmp_path})"]
    assert list(tmp_path.iterdir()) == []


def test_no_cuda_device_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["harness", "trainer.device=cuda", f"paths.runs={tmp_path}"])
    with pytest.raises(SystemExit) as exit_status:
        main()
    assert exit_status.value.code == 2 and list(tmp_path.iterdir()) == []
    assert capsys.readouterr().err.strip() == "error: trainer.device='cuda' but no CUDA device is available: use auto or cpu"


def test_an_empty_runs_folder_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["harness", "paths.runs="])
    with pytest.raises(SystemExit) as exit_status:
        main()
    assert exit_status.value.code == 2 and capsys.readouterr().err.strip() == "error: paths.runs='' must be a folder"


def test_a_value_of_the_wrong_type_in_a_sweep_stops_it_before_anything_is_written(runs_dir):
    result = run_cli("-m", "model.depth=8,20", "model.batchnorm=true,maybe", "data=synthetic", "trainer=smoke",
                     runs_dir=runs_dir, uri=f"sqlite:///{runs_dir}/mlflow.db")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: model.batchnorm: Value 'maybe' is not a valid bool (type str): use true")
    assert list(runs_dir.iterdir()) == []


@pytest.mark.parametrize("word, meaning", [("no", False), ("off", False), ("false", False), ("yes", True),
                                           ("on", True), ("true", True)])
def test_yes_no_on_off_are_booleans(word, meaning):
    cfg = compose_config(f"model.batchnorm={word}", f"model.residual={word}", f"augment.flip={word}")
    assert cfg.model.batchnorm is meaning and cfg.model.residual is meaning and cfg.augment.flip is meaning
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in make_model(cfg.model, 10).modules())
    assert has_bn is meaning


def test_batchnorm_no_trains_a_model_without_batchnorm(runs_dir):
    uri = f"sqlite:///{runs_dir}/mlflow.db"
    result = run_cli("data=synthetic", "trainer=smoke", "model.depth=8", "model.batchnorm=no", "model.residual=off",
                     runs_dir=runs_dir)
    assert result.returncode == 0, result.stderr
    _, runs = all_runs(uri)
    (run,) = runs
    assert (run.data.params["model.batchnorm"], run.data.params["model.residual"]) == ("False", "False")
    table = download_artifacts(run_id=run.info.run_id, artifact_path="layers.csv", tracking_uri=uri)
    modules = {row["module"] for row in csv.DictReader(io.StringIO(open(table).read()))}
    assert modules == {"Conv2d", "Linear"}  # no BatchNorm2d among the layers that were trained
    weights = torch.load(download_artifacts(run_id=run.info.run_id, artifact_path="model/model_weights.pt",
                                            tracking_uri=uri))
    assert not any("bn" in key or "running_mean" in key for key in weights)


def test_a_recipe_is_one_file_and_a_group_named_on_the_command_line_wins():
    he2016 = compose_config("recipe=he2016")
    assert (he2016.optim.lr, he2016.optim.momentum, he2016.optim.weight_decay) == (0.1, 0.9, 1e-4)
    assert he2016.schedule._target_ == "harness.training.optim.Step" and he2016.trainer.steps == 64000
    assert he2016.augment.crop and he2016.augment.flip
    fast_adam = compose_config("recipe=fast", "optim=adam", "trainer.epochs=5")
    assert fast_adam.optim._target_ == "torch.optim.Adam" and fast_adam.optim.lr == 1e-3
    assert fast_adam.schedule._target_ == "harness.training.optim.OneCycle" and fast_adam.trainer.epochs == 5


@pytest.mark.parametrize("trainer", ["smoke", "cpu", "cpu56"])
def test_probes_off_wins_over_a_trainer_preset(trainer):
    """The smoke and cpu presets pick smaller probes; a probes= choice on the command line wins."""
    for order in ([f"trainer={trainer}", "probes=off"], ["probes=off", f"trainer={trainer}"]):
        probes = compose_config(*order).probes
        assert (probes.shift.images, probes.shift.val_images, probes.grad_norms.every, list(probes.invariance.families)) \
            == (0, 0, 0, [])
    assert compose_config(f"trainer={trainer}").probes.shift.val_images == (16 if trainer == "smoke" else 50)


def test_the_cpu56_budget_runs_a_sweep_one_job_per_cpu_and_a_launcher_named_on_the_command_line_wins():
    """trainer=cpu56 judges depth 56 on 2 cores by a half-width net and one one-thread job per CPU (joblib)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cpu56 = compose("config", overrides=["+experiment=depth_residual", "trainer=cpu56"], return_hydra_config=True)
        named = {launcher: compose("config", overrides=["+experiment=depth_residual", "trainer=cpu56",
                                                         f"hydra/launcher={launcher}"], return_hydra_config=True)
                 for launcher in ("basic", "slurm")}
    assert "JoblibLauncher" in cpu56.hydra.launcher._target_ and cpu56.hydra.launcher.n_jobs == -1
    assert "BasicLauncher" in named["basic"].hydra.launcher._target_
    assert "SlurmLauncher" in named["slurm"].hydra.launcher._target_
    assert (cpu56.model.width, cpu56.trainer.epochs, cpu56.data.train_subset) == (0.5, 12, 10000)
    assert cpu56.hydra.sweeper.params["model.depth"] == "8,20,56"


def test_the_resolved_config_prints_compile_false_as_a_boolean():
    from omegaconf import OmegaConf

    assert "compile: false\n" in OmegaConf.to_yaml(compose_config("trainer=smoke").trainer)
    assert compose_config("trainer.compile=max-autotune").trainer.compile == "max-autotune"


def test_a_typo_in_a_config_file_without_a_schema_lists_the_keys_it_has(monkeypatch, capsys, tmp_path):
    (tmp_path / "conf" / "optim").mkdir(parents=True)
    (tmp_path / "conf" / "optim" / "adagrad.yaml").write_text(
        "_target_: torch.optim.Adagrad\n_partial_: true\nlr: 0.05\nweight_decay: 1e-4\n")
    monkeypatch.setattr(sys, "argv", ["harness", f"hydra.searchpath=[file://{tmp_path}/conf]", "optim=adagrad",
                                      "optim.lrr=1", f"paths.runs={tmp_path}/runs"])
    with pytest.raises(SystemExit) as exit_status:
        main()
    assert exit_status.value.code == 2 and not (tmp_path / "runs").exists()
    assert capsys.readouterr().err.strip() == "error: optim.lrr: Key 'lrr' is not in struct (allowed keys: lr, weight_decay)"


@pytest.mark.parametrize("overrides, says", [
    (["data.test_subset=-1"], "data.test_subset=-1 must be at least 0"),
    (["data=synthetic", "data.test_subset=2000"], "data.test_subset=2000 must be at most data.test_size=1024"),
])
def test_a_bad_test_subset_is_one_line(overrides, says, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(sys, "argv", ["harness", *overrides, f"paths.runs={tmp_path}"])
    with pytest.raises(SystemExit) as exit_status:
        main()
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_status.value.code == 2 and len(lines) == 1 and says in lines[0], lines
