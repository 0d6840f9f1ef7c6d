"""A study is one entry (analysis.studies): the report reads the preset a sweep's parent run
recorded and reports that preset's studies; runs are labelled in their model family's words;
analysis never imports torch."""

import json
import subprocess
import sys

import pandas as pd

from analysis import figures, frames, studies
from analysis.claims import Claim, gradient_flow_markdown
from analysis.load import open_client, select_runs
from analysis.report import write_report
from harness import contract

from conftest import PROJECT_ROOT, SYNTHETIC, run_cli

FAST = [*SYNTHETIC, "trainer=smoke", "probes.shift.images=64"]


def test_every_study_names_figures_that_exist_and_a_preset_that_does():
    for study in studies.STUDIES:
        assert set(study.figures) <= set(figures.BY_NAME), study.name
        assert (PROJECT_ROOT / "conf" / "experiment" / f"{study.preset}.yaml").is_file(), study.name


def test_a_study_added_as_a_preset_and_one_entry_is_reported(tmp_path, monkeypatch):
    """The parent run records the preset; the report has that preset's study (its claims and
    figures, a figure whose axis was not swept skipped with a note), and no other study."""
    presets = tmp_path / "conf" / "experiment"
    presets.mkdir(parents=True)
    (presets / "agreement.yaml").write_text("# @package _global_\nhydra:\n  sweeper:\n    params:\n"
                                            "      trainer.seed: 0,1\n")
    runs_dir = tmp_path / "runs"
    result = run_cli("-m", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "+experiment=agreement",
                     "model.depth=8", *FAST, runs_dir=runs_dir)
    assert result.returncode == 0, result.stderr
    client = open_client(f"sqlite:///{runs_dir}/mlflow.db")
    selection = select_runs(client)
    assert selection.parent.data.tags[contract.PRESET] == "agreement" and selection.preset == "agreement"

    agreement = studies.Study("Seeds agree", "agreement", (
        Claim("Two seeds train alike", "final training loss", {"seed": "min"}, "<=", {"seed": "max"}),),
        ("grad_heatmap", "optimizers"))
    monkeypatch.setattr(studies, "STUDIES", [*studies.STUDIES, agreement])
    out = tmp_path / "report"
    results = write_report(client, f"sqlite:///{runs_dir}/mlflow.db", selection, out, "http://127.0.0.1:5000")
    assert sorted(results) == ["3_grad_heatmap", "optimizers"]
    assert results["optimizers"] == "skipped: the optimizer was not swept"
    index = (out / "index.md").read_text()
    assert "### Seeds agree" in index and "| Two seeds train alike |" in index
    assert set(pd.read_csv(out / "claims.csv")["study"]) == {"Seeds agree"}


def test_a_sweep_without_a_preset_is_read_for_every_study():
    assert studies.of_preset(None) == studies.STUDIES
    assert studies.of_preset("seeds") == studies.STUDIES  # a preset with no study of its own
    assert [s.preset for s in studies.of_preset("optimizers,seeds")] == ["optimizers"]


VGG = {"family": "VGG", "columns": {"norm": {"axis": "batchnorm", "values": {"true": "VGG-BN", "false": "VGG"}}}}


def test_runs_are_labelled_by_their_model_family_and_old_runs_as_resnets():
    runs = pd.DataFrame({"run_id": ["v1", "v2", "r"], "param.model.depth": [11, 11, 8],
                         "param.model.batchnorm": [True, False, True], "param.model.residual": [False, False, True],
                         f"tag.{contract.MODEL_LABELS}": [json.dumps(VGG), json.dumps(VGG), None]})
    labelled = frames.labelled_runs(runs).set_index("run_id")
    assert labelled.loc["v1", "norm"] == "VGG-BN" and labelled.loc["v2", "norm"] == "VGG"
    assert labelled.loc["r", "architecture"] == "residual" and labelled.loc["r", "normalisation"] == "BatchNorm"
    assert list(labelled["net"]) == ["VGG-BN-11", "VGG-11", "residual-8"]
    assert pd.isna(labelled.loc["v1", "architecture"])  # no ResNet word for a VGG

    vgg = frames.labelled_runs(runs[runs["run_id"] != "r"]).set_index("run_id")
    assert frames.label_columns(vgg) == ["norm"]
    assert figures.run_title(vgg.loc["v2"], ["batchnorm", "depth"]) == "VGG, depth 11"
    flow = pd.DataFrame({"run_id": ["v1"], "net": ["VGG-BN-11"], "norm": ["VGG-BN"], "depth": [11],
                         f"tag.{contract.MODEL_LABELS}": [json.dumps(VGG)], "ratio_start": [2.0], "ratio_end": [3.0],
                         "end_step": [10], "nonfinite_step": [float("nan")], "diverged": [False],
                         "first_layer": ["features.0"], "last_layer": ["features.9"]})
    (line,) = [line for line in gradient_flow_markdown(flow) if line.startswith("- ")]
    assert line.startswith("- VGG-BN-11 (1 run): 2 at step 0 (neither)")


def test_analysis_imports_no_torch():
    code = ("import sys, analysis.__main__, analysis.report, analysis.load, analysis.studies, analysis.html, "
            "analysis.figures; assert 'torch' not in sys.modules, 'torch was imported'")
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
