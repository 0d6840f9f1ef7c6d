"""Writing a report folder: every applicable figure as PNG and PDF, summary.csv, claims.csv
(the verdict on each lecture claim the runs speak to), index.md,
then the folder as artifacts of the sweep's parent run (visible in the MLflow UI).

The folder is built beside its destination and swapped in whole, so a report is never half
written and never mixes files of two runs of the command.
"""

import os
import shutil
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from mlflow.exceptions import MlflowException

from analysis.claims import RULE, claims_markdown, gradient_flow, gradient_flow_markdown, measures, verdicts
from analysis.figures import DPI, FIGURES, Skip
from analysis.frames import grad_by_layer, summary, swept
from analysis.html import write_html
from harness import contract
from analysis.load import histories_frame, layer_tables, runs_frame

# fixed metadata: re-running on the same store writes the same bytes
PDF_METADATA = {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None}
PNG_METADATA = {"Software": None}


def write_report(client, uri, selection, out_dir: Path, ui_url: str) -> dict:
    """Write the report of the selected runs into out_dir; return {figure: caption or skip note}.
    ui_url: where the MLflow UI shows this store, for report.html's links to the runs."""
    runs = runs_frame(selection.runs)
    history = histories_frame(client, uri, selection.runs)
    layers = layer_tables(client, selection.runs)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    build.chmod(0o777 & ~umask)  # mkdtemp makes it private; a report is for sharing
    try:
        drawn, skipped = _draw_figures(history, runs, layers, build)
        table = summary(runs)
        table.to_csv(build / "summary.csv", index=False)
        flow = gradient_flow(grad_by_layer(history, runs, layers))
        claims = verdicts(measures(history, runs, layers, flow), swept(runs))
        claims.to_csv(build / "claims.csv", index=False)
        (build / "index.md").write_text(_index(selection, drawn, skipped, table, flow, claims))
        experiments = {r.info.run_id: r.info.experiment_id for r in selection.runs}
        write_html(build / "report.html", f"Report: {selection.name}", _intro(selection), build, drawn, skipped,
                   RULE.replace("*", ""), claims, table, list(zip(table["run"], table["run_id"])),
                   lambda run_id: f"{ui_url.rstrip('/')}/#/experiments/{experiments[run_id]}/runs/{run_id}"
                                  f"?{contract.UI_MODEL_TRAINING}",
                   _first_config(client, selection.runs))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        build.rename(out_dir)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    if selection.parent is not None:
        client.log_artifacts(selection.parent.info.run_id, str(out_dir), "report")
    return {**drawn, **{name: f"skipped: {why}" for name, why in skipped.items()}}


def _draw_figures(history, runs, layers, folder: Path):
    drawn, skipped = {}, {}
    if not (runs["status"] == "FINISHED").any():  # not a question of probes or axes
        states = ", ".join(f"{n} {status.lower()}" for status, n in runs["status"].value_counts().items())
        return drawn, {name: f"no run of the selection finished ({states})" for name, _, _ in FIGURES}
    for number, (name, draw, caption) in enumerate(FIGURES, 1):
        try:
            fig, finding = draw(history, runs, layers)
        except Skip as reason:
            skipped[name] = str(reason)
            continue
        stem = f"{number}_{name}"
        fig.savefig(folder / f"{stem}.png", dpi=DPI, metadata=PNG_METADATA)
        fig.savefig(folder / f"{stem}.pdf", metadata=PDF_METADATA)
        plt.close(fig)
        drawn[stem] = f"{caption} {finding}".strip()
    return drawn, skipped


def _intro(selection) -> str:
    return f"{len(selection.runs)} runs" + (f" of sweep {selection.name} (parent run {selection.parent.info.run_id})"
                                            if selection.parent else "")


def _first_config(client, runs) -> str | None:
    """The resolved config of the first run that logged one."""
    for run in runs:
        try:
            return Path(client.download_artifacts(run.info.run_id, "config_resolved.yaml")).read_text()
        except (MlflowException, OSError):
            continue
    return None


def _index(selection, drawn: dict, skipped: dict, table: pd.DataFrame, flow: pd.DataFrame,
           claims: pd.DataFrame) -> str:
    lines = [f"# Report: {selection.name}", "", _intro(selection).replace(selection.name, f"`{selection.name}`", 1),
             "", "The same report with its figures in one file, for the MLflow UI and a browser: `report.html`.", ""]
    if not claims.empty:
        lines += claims_markdown(claims)
    lines += ["## Figures", ""]
    for stem, caption in drawn.items():
        lines += [f"![{caption}]({stem}.png)", "", f"*{caption}* ([PDF]({stem}.pdf))", ""]
    if skipped:
        lines += ["Not drawn:", ""] + [f"- {name}: {why}" for name, why in skipped.items()] + [""]
    if not flow.empty:
        lines += gradient_flow_markdown(flow)
    lines += ["## Summary", "", _markdown_table(table.drop(columns="run_id")), "",
              "Losses are cross-entropy; accuracies and shift scores are fractions. "
              "Full precision in `summary.csv`.", ""]
    return "\n".join(lines)


def _markdown_table(table: pd.DataFrame) -> str:
    def cell(value):
        if isinstance(value, float):
            return "" if pd.isna(value) else f"{value:.4f}"
        return str(value)

    rows = [list(table.columns)] + [[cell(v) for v in row] for row in table.itertuples(index=False)]
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    lines.insert(1, "|" + "---|" * len(table.columns))
    return "\n".join(lines)
