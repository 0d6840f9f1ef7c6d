"""`python -m analysis` on stores made by real tiny sweeps (synthetic data, smoke trainer)."""

import csv
import hashlib
import json
import re
import shutil
import sqlite3

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from analysis import frames
from analysis.figures import DPI, FIGSIZE
from analysis.load import histories_frame, layer_tables, open_client, runs_frame, select_runs

from conftest import SYNTHETIC, chromium, run_cli, run_module

FAST = [*SYNTHETIC, "trainer=smoke", "probes.shift.images=64"]


def analysis(*args):
    return run_module("analysis", *args, timeout=300)


@pytest.fixture(scope="module")
def depth_bn_store(tmp_path_factory):
    """A 2 x 2 sweep over depth and BatchNorm with the landscape probe on, via the study preset."""
    runs_dir = tmp_path_factory.mktemp("store") / "runs"
    result = run_cli("-m", "+experiment=batchnorm", "model.depth=8,14", "model.residual=true", "trainer.seed=0",
                     "probes.landscape.every=4", *FAST, "hydra/launcher=basic", runs_dir=runs_dir)
    assert result.returncode == 0, result.stderr
    return f"sqlite:///{runs_dir}/mlflow.db", runs_dir


def test_report_of_the_latest_sweep(depth_bn_store, tmp_path):
    uri, _ = depth_bn_store
    out = tmp_path / "report"
    result = analysis("--uri", uri, "--out", str(out))
    assert result.returncode == 0, result.stderr
    drawn = ["1_training_curves", "2_grad_vs_layer", "3_grad_heatmap", "4_error_vs_depth", "7_landscape"]
    for stem in drawn:
        with Image.open(out / f"{stem}.png") as image:
            image.load()
            assert image.size == (FIGSIZE[0] * DPI, FIGSIZE[1] * DPI)
        assert (out / f"{stem}.pdf").read_bytes().startswith(b"%PDF")
    index = (out / "index.md").read_text()
    assert all(f"]({stem}.png)" in index for stem in drawn)
    # the preset's study only: the figures and claims of the others are not reported, not even as skipped
    assert sorted(p.stem for p in out.glob("*.png")) == drawn + ["8_first_layer_gradient"]
    assert "### BatchNorm" in index and "### Depth and residual connections" not in index
    assert "optimizers" not in index and "Not drawn" not in index

    client = open_client(uri)
    selection = select_runs(client)
    stored = {r.info.run_name: r.data.metrics for r in selection.runs}
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert len(rows) == 4
    for row in rows:
        metrics = stored[row["run"]]
        for column, key in [("test acc", "test/acc"), ("val loss", "val/loss"), ("train loss", "train/loss"),
                            ("shift consistency", "test/shift_consistency")]:
            assert float(row[column]) == metrics[key], (row["run"], column)
        assert f"{metrics['test/acc']:.4f}" in index

    artifacts = {a.path for a in client.list_artifacts(selection.parent.info.run_id, "report")}
    assert {"report/index.md", "report/summary.csv", "report/1_training_curves.png"} <= artifacts
    # the verdicts on the sweep's page in the UI: one line each in its description, and a table
    parent = client.get_run(selection.parent.info.run_id)
    said, verdicts = parent.data.tags["mlflow.note.content"].split("\n\nVerdicts: (`python -m analysis`)\n\n")
    assert said.startswith(f"Sweep {selection.name}: 4 jobs (4 finished) over ") and "model.depth = 8, 14" in said
    assert "model.batchnorm = False, True" in said
    claims = pd.read_csv(out / "claims.csv").fillna({"where": ""})
    claims = claims.assign(difference=claims.get("difference", np.nan))  # none where no run converged
    assert len(claims) and verdicts.splitlines() == [
        f"- {r.claim} ({r.where}): **{r.verdict}**" + ("" if pd.isna(r.difference) else f", A - B = {r.difference:.3g}")
        for r in claims.itertuples()]
    table = json.loads(open(client.download_artifacts(parent.info.run_id, "claims_table.json")).read())
    assert [row[table["columns"].index("verdict")] for row in table["data"]] == list(claims["verdict"])

    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()}
    assert analysis("--uri", uri, "--out", str(out), "--sweep", selection.name).returncode == 0
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()}
    assert after == before  # the same store gives the same files


def test_report_html_shows_every_figure_in_a_browser_from_disk(depth_bn_store, tmp_path):
    """One self-contained file: every figure decodes and has a size on the page; every run is a
    link to its page in the MLflow UI."""
    sync_playwright, chromium_path = chromium()
    uri, _ = depth_bn_store
    out = tmp_path / "report"
    assert analysis("--uri", uri, "--out", str(out), "--ui", "http://127.0.0.1:5999").returncode == 0
    drawn = sorted(p.stem for p in out.glob("*.png"))
    html_file = out / "report.html"
    copy = tmp_path / "alone" / "report.html"  # nothing beside it: the figures must be inside
    copy.parent.mkdir()
    copy.write_bytes(html_file.read_bytes())
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(copy.as_uri())
        images = page.evaluate("""() => Array.from(document.images).map(i => ({
            id: i.closest('figure').id, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight,
            shown: i.getBoundingClientRect().width * i.getBoundingClientRect().height}))""")
        links = page.evaluate("() => Array.from(document.querySelectorAll('a')).map(a => [a.textContent, a.href])")
        headings = page.evaluate("() => Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
        config = page.evaluate("() => Array.from(document.querySelectorAll('h2')).pop().nextElementSibling.textContent")
        browser.close()
    assert sorted(i["id"] for i in images) == drawn
    assert all(i["complete"] and (i["width"], i["height"]) == (FIGSIZE[0] * DPI, FIGSIZE[1] * DPI) and i["shown"] > 100_000
               for i in images), images
    client = open_client(uri)
    runs = select_runs(client).runs
    expected = {(r.info.run_name, f"http://127.0.0.1:5999/#/experiments/{r.info.experiment_id}/runs/{r.info.run_id}"
                                  "?workflowType=machine_learning") for r in runs}
    assert set(map(tuple, links)) == expected
    # every section of index.md (its Summary is the Runs table), and the first job's config by job number
    index = [line[3:] for line in (out / "index.md").read_text().splitlines() if line.startswith("## ")]
    assert index == ["Claims", "Figures", "Gradient flow", "Summary"]
    assert headings == ["Claims", "Figures", "Gradient flow", "Runs", "Config"]
    first = min(runs, key=lambda r: int(r.data.tags["job_num"]))
    assert config.startswith(f"The resolved config of the first job, {first.info.run_name}. The others differ in ")
    assert "model.batchnorm (False, True)" in config and "model.depth (8, 14)" in config


def test_the_results_page_shows_the_claims_of_its_sweep(depth_bn_store, tmp_path):
    """docs/results.md from a store: each claim row of the sweep's own report, the command that
    ran it, the machine, the wall time and the key figure; a results folder the harness did not
    write is not replaced."""
    uri, _ = depth_bn_store
    sweep = select_runs(open_client(uri)).name
    assert analysis("--uri", uri, "--sweep", sweep, "--out", str(tmp_path / "report")).returncode == 0
    claims = pd.read_csv(tmp_path / "report" / "claims.csv").fillna({"where": ""})
    page = tmp_path / "docs" / "results.md"
    result = run_module("analysis.results", "--uri", uri, "--sweep", sweep, "--out", str(page),
                        "--reports", str(tmp_path / "reports"))
    assert result.returncode == 0, result.stderr
    text = page.read_text()
    lines = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert len(claims) > 0 and set(claims["study"]) == {"BatchNorm"}
    for row in claims.itertuples():
        line = lines[row.claim + (f" ({row.where})" if row.where else "")]
        assert f"| {row.a} | {row.relation} | {row.b} |" in line and f"| **{row.verdict}** | {row.why} |" in line
    assert ("`python -m harness -m +experiment=batchnorm model.depth=8,14 model.residual=true trainer.seed=0 "
            "probes.landscape.every=4 data=synthetic data.image_size=16 trainer=smoke probes.shift.images=64") in text
    assert "paths.runs=" in text and text.count("hydra/launcher=basic") == 1 and "hydra.mode" not in text
    assert "\n## BatchNorm, 12 steps of 32 images\n" in text  # a study's heading names the budget: sweeps differ
    assert "4 jobs (4 finished)" in text and " s wall time (the jobs' runs " in text and " s together) on cpu (" in text
    figure = f"results/{sweep.replace('/', '_')}-7_landscape.png"
    assert f"]({figure})" in text and (tmp_path / "docs" / figure).is_file()
    assert "Literature: Ioffe and Szegedy 2015" in text

    (tmp_path / "mine" / "results").mkdir(parents=True)
    (tmp_path / "mine" / "results" / "notes.txt").write_text("mine")
    result = run_module("analysis.results", "--uri", uri, "--sweep", sweep, "--out", str(tmp_path / "mine" / "results.md"),
                        "--reports", str(tmp_path / "reports"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "is not a report folder" in result.stderr, result.stderr
    assert (tmp_path / "mine" / "results" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "mine" / "results.md").exists()


def test_results_add_puts_a_sweep_from_another_store_on_the_page_and_replaces_it_when_added_again(
        depth_bn_store, tmp_path):
    """Sweeps from two stores (a CPU and a GPU machine) on one page: --add keeps the page's other
    sections and their figures, and a sweep added again replaces its own section, not a copy beside it."""
    uri, runs_dir = depth_bn_store
    sweep = select_runs(open_client(uri)).name
    other_db = tmp_path / "other" / "mlflow.db"
    other_db.parent.mkdir()
    shutil.copy(runs_dir / "mlflow.db", other_db)
    other_uri, other_sweep = f"sqlite:///{other_db}", "2026-01-01/00-00-00-0ther0"
    other = open_client(other_uri)
    for run in other.search_runs([e.experiment_id for e in other.search_experiments()]):
        other.set_tag(run.info.run_id, "sweep_id", other_sweep)
    page, reports = tmp_path / "docs" / "results.md", str(tmp_path / "reports")
    assert run_module("analysis.results", "--uri", uri, "--sweep", sweep, "--out", str(page),
                      "--reports", reports).returncode == 0
    for _ in range(2):
        result = run_module("analysis.results", "--add", "--uri", other_uri, "--sweep", other_sweep,
                            "--out", str(page), "--reports", reports)
        assert result.returncode == 0, result.stderr
        text = page.read_text()
        headings = [line for line in text.splitlines() if line.startswith("## ")]
        assert headings == ["## BatchNorm, 12 steps of 32 images"] * 2
        assert f"sweep `{sweep}`." in text and text.count(f"sweep `{other_sweep}`.") == 1
        assert (f"Generated from the runs by `python -m analysis.results --sweep {sweep}`, then "
                f"`python -m analysis.results --add --sweep {other_sweep}`") in text
        for name in (sweep, other_sweep):
            figure = f"results/{name.replace('/', '_')}-7_landscape.png"
            assert f"]({figure})" in text and (tmp_path / "docs" / figure).stat().st_size > 10_000
    # a study run again whose old store is gone: --drop takes the old sweep's section and figure off
    result = run_module("analysis.results", "--add", "--uri", other_uri, "--sweep", other_sweep, "--drop", sweep,
                        "--out", str(page), "--reports", reports)
    assert result.returncode == 0, result.stderr
    text = page.read_text()
    assert [line for line in text.splitlines() if line.startswith("## ")] == ["## BatchNorm, 12 steps of 32 images"]
    assert f"sweep `{sweep}`." not in text
    assert f"`python -m analysis.results --add --sweep {other_sweep} --drop {sweep}`" in text
    figures = [f.name for f in (tmp_path / "docs" / "results").glob("*.png")]
    assert figures == [f"{other_sweep.replace('/', '_')}-7_landscape.png"]
    result = run_module("analysis.results", "--add", "--uri", other_uri, "--sweep", other_sweep, "--drop", sweep,
                        "--out", str(page), "--reports", reports)
    assert result.returncode == 2 and f"--drop {sweep}: " in result.stderr and "has no section" in result.stderr
    assert page.read_text() == text and result.stderr.count("\n") == 1
    (tmp_path / "mine.md").write_text("# my notes\n")
    result = run_module("analysis.results", "--add", "--uri", uri, "--sweep", sweep, "--out", str(tmp_path / "mine.md"),
                        "--reports", reports)
    assert result.returncode == 2 and "is not a results page" in result.stderr and result.stderr.count("\n") == 1
    assert (tmp_path / "mine.md").read_text() == "# my notes\n"


def test_figures_share_scales_start_at_zero_and_say_what_they_show(depth_bn_store):
    from analysis import figures

    uri, _ = depth_bn_store
    client = open_client(uri)
    selection = select_runs(client)
    runs, layers = runs_frame(selection.runs), layer_tables(client, selection.runs)
    history = histories_frame(client, uri, selection.runs)

    heatmap, _ = figures.grad_heatmap(history, runs, layers)
    meshes = [ax.collections[0] for ax in heatmap.axes if ax.get_title()]  # the panels, not the colour bar
    assert len(meshes) == 4 and len({mesh.get_clim() for mesh in meshes}) == 1  # one colour scale
    titles = [ax.get_title() for ax in heatmap.axes if ax.get_title()]
    assert len(set(titles)) == 4 and all("depth" in t and "BatchNorm" in t for t in titles)  # every varied axis

    curves, finding = figures.training_curves(history, runs, layers)
    assert all(ax.get_xlim()[0] == 0 and ax.get_ylim()[0] == 0 for ax in curves.axes if ax.get_xlabel())
    final = {}  # the caption's ratio, from MLflow directly: the claims' window, the last 10% of steps
    for run in selection.runs:
        key = (run.data.params["model.batchnorm"] == "True", int(run.data.params["model.depth"]))
        points = client.get_metric_history(run.info.run_id, "train/loss")
        end = max(p.step for p in points)
        final[key] = np.mean([p.value for p in points if p.step > 0.9 * end])
    assert (f"BatchNorm: depth 14's mean training loss over the last 10% of steps is "
            f"{final[(True, 14)] / final[(True, 8)]:#.3g}x depth 8's") in finding

    errors, _ = figures.error_vs_depth(history, runs, layers)
    ax = errors.axes[0]
    assert ax.get_ylim() == (0, 1) and "BatchNorm vs no BatchNorm" in errors._suptitle.get_text()  # the labels' words
    assert "plain vs residual" not in errors._suptitle.get_text()  # residual was not varied
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1  # outside the data

    per_layer, _ = figures.grad_vs_layer(history, runs, layers)
    assert all(tick == int(tick) for ax in per_layer.axes for tick in ax.get_xticks())


def test_grad_by_layer_frame_has_a_row_per_layer_per_step_per_run(depth_bn_store):
    uri, _ = depth_bn_store
    client = open_client(uri)
    selection = select_runs(client)
    runs = runs_frame(selection.runs)
    history, tables = histories_frame(client, uri, selection.runs), layer_tables(client, selection.runs)
    layers = frames.grad_by_layer(history, runs, tables)
    for run in selection.runs:
        one = layers[layers["run_id"] == run.info.run_id]
        depth = int(run.data.params["model.depth"])
        n_layers = 2 * (depth - 1) + 1 if run.data.params["model.batchnorm"] == "True" else depth
        steps = sorted(one["step"].unique())
        assert steps == list(range(12))  # smoke: 12 steps, all within the dense phase
        assert len(one) == n_layers * len(steps)
        for step in steps:
            at_step = one[one["step"] == step]
            assert list(at_step["layer_index"]) == list(range(n_layers))
            assert at_step["layer"].iloc[0] == "stem.conv" and at_step["layer"].iloc[-1] == "fc"
            assert at_step["module"].iloc[0] == "Conv2d" and at_step["module"].iloc[-1] == "Linear"
        value = one[(one["step"] == 0) & (one["layer_index"] == 0)]["value"].item()
        history = client.get_metric_history(run.info.run_id, "weights/grad_norm/000_stem.conv")
        assert value == history[0].value
        # the MLflow UI shows a run's metric sections in alphabetical order: headline first, per-layer last
        assert all("/" in key for key in run.data.metrics)
        assert sorted({key.split("/")[0] for key in run.data.metrics}) == ["test", "train", "val", "weights"]


# How the harness named its metrics before 2026-12-05, spelt out here rather than read from contract
BEFORE_THE_RENAME = [("train/lr", "lr"), ("train/epoch", "epoch"), ("train/epoch_time_s", "perf/epoch_time_s"),
                     ("train/images_per_sec", "perf/images_per_sec"), ("test/acc_at_shift", "shift/acc_dx"),
                     ("test/acc_at_rotation", "rotation/acc_at"), ("test/acc_at_scale", "scale/acc_at"),
                     ("test/acc_at_illumination", "illumination/acc_at"),
                     ("train/landscape_loss_variation", "landscape/loss_variation"),
                     ("train/landscape_grad_predictiveness", "landscape/grad_predictiveness")]
PREFIXES_BEFORE_THE_RENAME = [("train/startup_", "perf/startup_"), ("weights/grad_norm/", "grad_norm/")]


def test_a_store_written_before_the_metrics_were_renamed_reads_the_same(depth_bn_store, tmp_path):
    """A copy of the store with every metric under its old name: what analysis reads from it (and
    so every claim and figure) is what it reads from the store itself."""
    uri, _ = depth_bn_store
    old_db = tmp_path / "mlflow.db"
    shutil.copy(uri[len("sqlite:///"):], old_db)
    with sqlite3.connect(old_db) as db:
        for table in ("metrics", "latest_metrics"):
            renamed = sum(db.execute(f"UPDATE {table} SET key = ? WHERE key = ?", (old, new)).rowcount
                          for new, old in BEFORE_THE_RENAME)
            renamed += sum(db.execute(f"UPDATE {table} SET key = ? || substr(key, ?) WHERE key LIKE ?",
                                      (old, len(new) + 1, new + "%")).rowcount for new, old in PREFIXES_BEFORE_THE_RENAME)
            assert renamed > 0
    old_uri = f"sqlite:///{old_db}"

    def read(store):
        client = open_client(store)
        selection = select_runs(client)
        return runs_frame(selection.runs), histories_frame(client, store, selection.runs)

    stored = {key for run in select_runs(open_client(old_uri)).runs for key in run.data.metrics}
    assert {"lr", "perf/startup_build_s", "shift/acc_dx", "grad_norm/total"} <= stored and "train/lr" not in stored
    (runs, history), (old_runs, old_history) = read(uri), read(old_uri)
    pd.testing.assert_frame_equal(old_runs.sort_index(axis=1), runs.sort_index(axis=1))
    pd.testing.assert_frame_equal(old_history, history)


def test_a_net_at_chance_is_told_from_what_the_store_holds(depth_bn_store):
    """The at-chance rule on runs read back from a real store: each run's unshifted accuracy on
    the shift probe's images against 1 / classes + 2 binomial standard errors, recomputed here
    from the run's own metric history, params and tags."""
    from analysis.claims import measures

    uri, _ = depth_bn_store
    client = open_client(uri)
    selection = select_runs(client)
    measured = measures(histories_frame(client, uri, selection.runs), runs_frame(selection.runs),
                        layer_tables(client, selection.runs)).set_index("run_id")
    for run in selection.runs:
        params, chance = run.data.params, 1 / int(run.data.tags["classes"])
        images = int(params["probes.shift.images"])
        if params["data.test_size"] not in ("None", "null"):
            images = min(images, int(params["data.test_size"]))
        unshifted = [m.value for m in client.get_metric_history(run.info.run_id, "test/acc_at_shift")
                     if m.step == int(params["probes.shift.max"])]
        expected = unshifted[0] <= chance + 2 * (chance * (1 - chance) / images) ** 0.5
        assert bool(measured.loc[run.info.run_id, "at_chance"]) == expected
    assert measured["at_chance"].any()  # 12 steps of training leave a net at chance: the rule is exercised


def test_optimizer_and_augmentation_figures(tmp_path):
    runs_dir = tmp_path / "runs"
    result = run_cli("-m", "optim=sgd,adam", "augment=none,crop", "model.dropout=0,0.3", "model.depth=8", *FAST,
                     runs_dir=runs_dir)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "report"
    result = analysis("--uri", f"sqlite:///{runs_dir}/mlflow.db", "--out", str(out))
    assert result.returncode == 0, result.stderr
    for stem in ("5_optimizers", "3_grad_heatmap", "11_regularisation"):
        assert (out / f"{stem}.png").stat().st_size > 10_000
    index = (out / "index.md").read_text()
    # 12 steps leave every net at chance on the probe's 64 images: no invariance score counts
    assert "- shift_invariance: every run is at chance on the scored sample" in index
    assert not (out / "6_shift_invariance.png").exists()
    assert "error_vs_depth: depth was not swept" in index
    claims = pd.read_csv(out / "claims.csv")
    adam = claims[claims["claim"] == "Adam trains faster than plain SGD"]
    assert len(adam) == 4  # one per augment x dropout
    assert set(adam["verdict"]) == {"budget too short"}  # 12 steps: no window to compare
    assert all(why.startswith("not converged: ") and "(too few logged steps)" in why for why in adam["why"])
    assert "### Optimisers" in index and "| Adam trains faster than plain SGD (augment=crop, dropout=0.0) |" in index
    # a param only some runs log (Adam's betas, SGD's momentum) is a difference too, its absence a "-"
    config = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", (out / "report.html").read_text())  # "nan" in base64
    assert "optim.betas (-, [0.9, 0.999])" in config and "optim.momentum (" in config and "nan" not in config


def test_circular_padding_without_downsampling_is_exactly_shift_invariant_in_the_claims_table(tmp_path):
    """The known answer through the whole pipeline: consistency 1.0 over every circular shift."""
    runs_dir = tmp_path / "runs"
    result = run_cli("-m", "+experiment=downsampling", "model.downsample=stride,none", "model.padding=circular",
                     "augment=none,geometric", "trainer.seed=0,1", "model.depth=8", *FAST, "probes.shift.images=16",
                     "probes.shift.val_images=8", "data.test_size=256", "data.val_size=128", runs_dir=runs_dir,
                     timeout=900)  # 8 jobs, 4 at full resolution: exact invariance holds on any sample size
    assert result.returncode == 0, result.stderr
    out = tmp_path / "report"
    assert analysis("--uri", f"sqlite:///{runs_dir}/mlflow.db", "--out", str(out)).returncode == 0
    claims = pd.read_csv(out / "claims.csv").set_index(["claim", "where"])
    exact = "With circular padding and no downsampling, a CNN is exactly invariant to circular shifts"
    for augment in ("none", "geometric"):
        row = claims.loc[(exact, f"augment={augment}")]
        assert row["verdict"] == "holds" and row["b"] == "padding=circular, downsample=none: 1 ± 0 (n=2)"
    # 12 steps leave every net at chance on 16 images: no score counts, the bar figures say so
    index = (out / "index.md").read_text()
    assert "- downsampling: no shift consistency from a run above chance" in index
    assert "- invariance: " in index and not (out / "9_downsampling.png").exists()
    # the same runs without their class count (a store from before the `classes` tag) are not
    # judged at chance: both figures draw from what the store holds
    from analysis.figures import BY_NAME

    client = open_client(f"sqlite:///{runs_dir}/mlflow.db")
    selection = select_runs(client)
    runs = runs_frame(selection.runs).drop(columns=["tag.classes"])
    history = histories_frame(client, f"sqlite:///{runs_dir}/mlflow.db", selection.runs)
    for name in ("downsampling", "invariance"):
        figure, finding = BY_NAME[name].draw(history, runs, layer_tables(client, selection.runs))
        assert len(figure.axes) >= 1 and finding is not None


def test_unknown_sweep_and_empty_store_are_clear_errors(depth_bn_store, tmp_path):
    uri, _ = depth_bn_store
    result = analysis("--uri", uri, "--sweep", "1999-01-01/00-00-00-000000", "--out", str(tmp_path / "r"))
    assert result.returncode == 2
    assert "no sweep '1999-01-01/00-00-00-000000'; recent sweeps:" in result.stderr
    assert not (tmp_path / "r").exists()

    missing = analysis("--uri", f"sqlite:///{tmp_path}/none.db")
    assert missing.returncode == 2 and "no MLflow store at" in missing.stderr

    from mlflow.tracking import MlflowClient
    MlflowClient(f"sqlite:///{tmp_path}/empty.db").search_experiments()  # a store with no runs
    empty = analysis("--uri", f"sqlite:///{tmp_path}/empty.db")
    assert empty.returncode == 2 and "no sweeps" in empty.stderr


def test_gradient_flow_names_each_ratio_by_the_stated_rule():
    from analysis.claims import gradient_flow

    def rows(run, norms_by_step):  # two convs and a classifier per step
        return [{"run_id": run, "step": step, "layer_index": i, "layer": name, "module": module, "value": value,
                 "net": run, "architecture": run, "normalisation": "BatchNorm", "depth": 8, "diverged": False}
                for step, values in norms_by_step.items()
                for i, (name, module, value) in enumerate(zip(["stem.conv", "stage3.block1.conv2", "fc"],
                                                              ["Conv2d", "Conv2d", "Linear"], values))]
    layers = pd.DataFrame(rows("plain", {0: [500.0, 0.15, 9.0], 700: [0.003, 0.1, 9.0]})
                          + rows("residual", {0: [1.0, 0.5, 9.0], 50: [0.2, 0.1, 9.0]}))
    table = gradient_flow(layers).set_index("run_id")
    assert table.loc["plain", "ratio_start"] == pytest.approx(500 / 0.15)
    assert (table.loc["plain", "flow_start"], table.loc["plain", "flow_end"]) == ("exploding", "vanishing")
    assert table.loc["plain", "end_step"] == 700 and table.loc["plain", "last_layer"] == "stage3.block1.conv2"
    assert (table.loc["residual", "flow_start"], table.loc["residual", "flow_end"]) == ("neither", "neither")


def test_gradient_flow_ends_before_a_gradient_overflows():
    """MLflow stores an infinite gradient norm as 1.8e308: the end is the last finite step."""
    from analysis.claims import gradient_flow, gradient_flow_markdown

    inf = 1.7976931348623157e308
    norms = {0: [5.0, 20.0], 1: [90.0, 30.0], 2: [1e3, 40.0], 3: [inf, inf], 4: [inf, inf]}
    layers = pd.DataFrame([{"run_id": "r", "step": step, "layer_index": i, "layer": f"conv{i}", "module": "Conv2d",
                            "value": v, "net": "residual-20", "architecture": "residual",
                            "normalisation": "no BatchNorm", "depth": 20, "diverged": True}
                           for step, values in norms.items() for i, v in enumerate(values)])
    row = gradient_flow(layers).iloc[0]
    assert (row.ratio_start, row.end_step, row.ratio_end, row.flow_end, row.nonfinite_step) == (0.25, 2, 25.0, "exploding", 3)
    (line,) = [line for line in gradient_flow_markdown(gradient_flow(layers)) if line.startswith("- ")]
    assert line.startswith("- residual-20 (no BatchNorm, 1 run): 0.25 at step 0 (neither), 25 at step 2 (exploding)")
    assert "stopped being finite at step 3; 1 of its runs diverged" in line


def test_report_says_the_gradient_flow_of_each_run_from_its_metrics(depth_bn_store, tmp_path):
    uri, _ = depth_bn_store
    out = tmp_path / "report"
    assert analysis("--uri", uri, "--out", str(out)).returncode == 0
    index = (out / "index.md").read_text()
    assert "## Gradient flow" in index and (out / "8_first_layer_gradient.png").is_file()
    client = open_client(uri)
    for run in select_runs(client).runs:
        table = list(csv.DictReader(open(client.download_artifacts(run.info.run_id, "layers.csv"))))
        convs = [row["metric"] for row in table if row["module"] == "Conv2d"]
        first, last = (client.get_metric_history(run.info.run_id, f"weights/grad_norm/{m}") for m in (convs[0], convs[-1]))
        ratio = first[0].value / last[0].value  # step 0, read straight from MLflow
        net = f"{'residual' if run.data.params['model.residual'] == 'True' else 'plain'}-{run.data.params['model.depth']}"
        line = next(line for line in index.splitlines()
                    if line.startswith(f"- {net} (") and ("no BatchNorm" in line) == (run.data.params["model.batchnorm"] == "False"))
        assert f"{ratio:.3g} at step 0" in line


def test_a_sweep_whose_jobs_all_failed_says_so_not_probes_off(tmp_path):
    runs_dir = tmp_path / "runs"
    result = run_cli("-m", "model.depth=8,14", "optim.momentum=-1", *FAST, runs_dir=runs_dir)
    assert result.returncode == 1
    out = tmp_path / "report"
    assert analysis("--uri", f"sqlite:///{runs_dir}/mlflow.db", "--out", str(out)).returncode == 0
    index = (out / "index.md").read_text()
    assert "training_curves: no run of the selection finished (2 failed)" in index
    assert "probes off" not in index
    assert oct(out.stat().st_mode & 0o777) != oct(0o700)  # a report folder others may read


def test_runs_of_one_config_choice_trained_differently_are_labelled_apart():
    """augment=crop_flip with augment.flip=false is not crop_flip: the label says what differed;
    a value every run shares (augment.pad) and an axis of its own (weight decay) stay out."""
    runs = pd.DataFrame({"run_id": ["a", "b", "c"], "tag.choice.augment": ["crop_flip", "crop_flip", "none"],
                         "tag.choice.optim": ["momentum"] * 3, "param.augment.flip": [False, True, False],
                         "param.augment.pad": [2, 2, 2], "param.optim.weight_decay": [1e-4, 5e-4, 1e-4],
                         "param.model.residual": [True] * 3, "param.model.batchnorm": [True] * 3,
                         "param.model.depth": [8] * 3})
    labelled = frames.labelled_runs(runs)
    assert list(labelled["augment"]) == ["crop_flip augment.flip=False", "crop_flip augment.flip=True", "none"]
    assert list(labelled["optimizer"]) == ["momentum"] * 3
