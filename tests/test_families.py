"""A model family is one module and one YAML file: trained through the real CLI, its runs
carry the family's labels, and its own rules refuse its bad values in one line."""

import json
import os
import shutil
import subprocess
import sys

import pytest

import tiny_vgg
from harness import contract
from harness.app import main

from conftest import PROJECT_ROOT, all_runs, local_store

VGG_YAML = "defaults:\n  - /schema/model/vgg@_here_\n  - _self_\nwidth: 8\nbatchnorm: true\n"


def test_a_new_model_family_is_one_module_and_one_yaml_file(tmp_path):
    """In a copy of the project: harness/models/vgg.py and conf/model/vgg.yaml, nothing else."""
    project = tmp_path / "project"
    for folder in ("harness", "conf"):
        shutil.copytree(PROJECT_ROOT / folder, project / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PROJECT_ROOT / "tests" / "tiny_vgg.py", project / "harness" / "models" / "vgg.py")
    (project / "conf" / "model" / "vgg.yaml").write_text(VGG_YAML)
    runs_dir = tmp_path / "runs"
    uri = local_store(runs_dir)
    result = subprocess.run(
        [sys.executable, "-m", "harness", "-m", "model=vgg,resnet", "model.batchnorm=false", "data=synthetic",
         "trainer=smoke", f"paths.runs={runs_dir}", f"tracking.uri={uri}"],
        cwd=project, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(project)})
    assert result.returncode == 0, result.stderr
    _, runs = all_runs(uri)
    jobs = {r.data.tags["choice.model"]: r for r in runs if "job_num" in r.data.tags}
    assert set(jobs) == {"vgg", "resnet"} and all(r.info.status == "FINISHED" for r in jobs.values())
    assert jobs["vgg"].data.params["model._target_"] == "harness.models.vgg.TinyVGG"
    assert json.loads(jobs["vgg"].data.tags[contract.MODEL_LABELS]) == tiny_vgg.LABELS
    assert json.loads(jobs["resnet"].data.tags[contract.MODEL_LABELS]) == contract.RESNET_LABELS


def test_a_model_familys_own_rule_is_one_line(monkeypatch, capsys, tmp_path):
    """The family's module, imported here, has registered its schema; the YAML is in a folder of the user's own."""
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "vgg.yaml").write_text(VGG_YAML)
    monkeypatch.setattr(sys, "argv", ["harness", f"hydra.searchpath=[file://{tmp_path}/conf]", "model=vgg",
                                      "model.width=0", f"paths.runs={tmp_path}/runs"])
    with pytest.raises(SystemExit) as exit_status:
        main()
    assert exit_status.value.code == 2 and not (tmp_path / "runs").exists()
    assert capsys.readouterr().err.strip() == "error: model.width=0 must be a positive number of filters"
