"""Writing a report folder for the studies of the sweep's preset (analysis.studies): each of
their figures that applies as PNG and PDF, summary.csv, claims.csv (the verdict on each of
their claims the runs speak to), index.md,
then the folder as artifacts of the sweep's parent run (visible in the MLflow UI).

The folder is built beside its destination and swapped in whole, so a report is never half
written and never mixes files of two runs of the command. It replaces only a folder that it
wrote itself (MARKER is in it), and its name, read from the store, stays inside the report root.
"""

import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from mlflow.exceptions import MlflowException

from analysis import studies as all_studies
from analysis.claims import (RULE, claims_markdown, gradient_flow, gradient_flow_markdown, interval_text, measures,
                             verdicts)
from analysis.figures import DPI, FIGURES, Skip
from analysis.frames import as_text, finished, grad_by_layer, summary, swept
from analysis.html import write_html
from harness import contract
from harness.errors import HarnessError
from analysis.load import histories_frame, layer_tables, runs_frame

# fixed metadata: re-running on the same store writes the same bytes
PDF_METADATA = {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None}
PNG_METADATA = {"Software": None}


MARKER = ".harness-report"  # in every report folder: the only folders a report replaces
MARKER_TEXT = "Written by `python -m analysis`, which replaces this folder when it writes the report again.\n"
NAME_LIMIT = 100  # characters of a folder name read from the store
NOTE_LIMIT = 5000  # characters of the parent's description: what every MLflow store keeps of a tag


class ReportError(HarnessError):
    """The report cannot go where it was asked to; the message says where and why."""


def report_folder(root: Path, name: str) -> Path:
    """root/<name> for a name read from the store (a sweep id, an experiment name), which anyone
    who can write to the store chooses: each /-separated part keeps [A-Za-z0-9._-] and no leading
    dot, NAME_LIMIT characters at most; a name that had to change ends with a hash of the
    original, so two names never share a folder."""
    parts = [re.sub(r"[^A-Za-z0-9._-]", "_", part).lstrip(".") for part in name.split("/")]
    safe = "/".join(part for part in parts if part)[:NAME_LIMIT].strip("/")
    if safe != name or not safe:  # not safe: the name was empty, and root itself is no report folder
        safe = (f"{safe}-" if safe else "") + hashlib.sha256(name.encode()).hexdigest()[:8]
    folder = root / safe
    if not folder.resolve().is_relative_to(root.resolve()):  # a link inside the root that leads out
        raise ReportError(f"the report folder {folder} leads outside {root}: remove the link or use --out")
    return folder


def write_report(client, uri, selection, out_dir: Path, ui_url: str) -> dict:
    """Write the report of the selected runs into out_dir; return {figure: caption or skip note}.
    ui_url: where the MLflow UI shows this store, for report.html's links to the runs.
    ReportError if out_dir is something else than a report folder, or cannot be written."""
    check_replaceable(out_dir)
    runs = runs_frame(selection.runs)
    history = histories_frame(client, uri, selection.runs)
    layers = layer_tables(client, selection.runs)
    config = _first_config(client, selection.runs, runs)
    left_out = ", ".join(f"{r.run_name} ({r.status.lower()})" for r in runs[~finished(runs)].itertuples())
    studies = all_studies.of_preset(selection.preset)
    try:
        with swapped_in(out_dir) as build:
            drawn, skipped = _draw_figures(_figures_of(studies), history, runs, layers, build)
            flow = gradient_flow(grad_by_layer(history, runs, layers))
            measured = measures(history, runs, layers, flow)
            chance = runs["run_id"].map(measured.set_index("run_id")["at_chance"]).map({True: "yes", False: ""})
            table = summary(runs).assign(**{"at chance": chance.to_numpy()})
            table.to_csv(build / "summary.csv", index=False)
            claims = verdicts(measured, swept(runs), studies)
            claims.to_csv(build / "claims.csv", index=False)
            intro = _intro(selection, left_out)
            drawn_flow = flow[flow["run_id"].isin(runs.loc[finished(runs), "run_id"])] if len(flow) else flow
            (build / "index.md").write_text(_index(selection, intro, drawn, skipped, table, drawn_flow, claims))
            experiments = {r.info.run_id: r.info.experiment_id for r in selection.runs}
            flow_lines = gradient_flow_markdown(drawn_flow) if not drawn_flow.empty else []
            write_html(build / "report.html", f"Report: {selection.name}", intro, build, drawn, skipped,
                       RULE.replace("*", ""), claims, flow_lines, table, list(zip(table["run"], table["run_id"])),
                       lambda run_id: f"{ui_url.rstrip('/')}/#/experiments/{experiments[run_id]}/runs/{run_id}"
                                      f"?{contract.UI_MODEL_TRAINING}",
                       config)
    except OSError as e:
        raise ReportError(f"cannot write the report to {out_dir}: {e.filename or out_dir}: "
                          f"{e.strerror or e} ({errno.errorcode.get(e.errno, 'no errno')})") from None
    if selection.parent is not None:
        client.log_artifacts(selection.parent.info.run_id, str(out_dir), "report")
        _verdicts_on_parent(client, selection.parent, claims)
    left = {"left out of the figures": left_out} if left_out else {}
    return {**left, **drawn, **{name: f"skipped: {why}" for name, why in skipped.items()}}


def _verdicts_on_parent(client, parent, claims: pd.DataFrame) -> None:
    """The claims on the sweep's page in the MLflow UI: a line each in its description (after
    what the sweep said of itself), and the table as an MLflow table beside the report."""
    if claims.empty:
        return
    lines = []
    for r in claims.itertuples():
        numbers = interval_text(r._asdict())
        lines.append(f"- {r.claim}{f' ({r.where})' if r.where else ''}: **{r.verdict}**"
                     + ("" if numbers == "-" else f", A - B = {numbers}"))
    sweep_said = parent.data.tags.get(contract.NOTE, "").split(contract.VERDICTS)[0]
    note = f"{sweep_said}{contract.VERDICTS}(`python -m analysis`)\n\n" + "\n".join(lines)
    client.set_tag(parent.info.run_id, contract.NOTE, note[:NOTE_LIMIT])
    columns = ["study", "claim", "where", "a", "relation", "b", "difference", "low", "high", "margin", "verdict", "why"]
    table = claims.reindex(columns=columns)
    client.log_table(parent.info.run_id, data=table.astype(object).where(table.notna(), None),
                     artifact_file=contract.CLAIMS_TABLE)


def check_replaceable(out_dir: Path) -> None:
    if out_dir.is_symlink() or (out_dir.exists() and not (out_dir / MARKER).is_file()):
        raise ReportError(f"{out_dir} exists and is not a report folder (it has no {MARKER}): "
                          "choose another --out, or move it away")


@contextlib.contextmanager
def swapped_in(out_dir: Path):
    """A folder built beside out_dir (with MARKER in it) that replaces out_dir when the block
    succeeds, and is removed whatever happens."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        build.chmod(0o777 & ~umask)  # mkdtemp makes it private; a report is for sharing
        (build / MARKER).write_text(MARKER_TEXT)
        yield build
        if out_dir.exists() or out_dir.is_symlink():
            check_replaceable(out_dir)  # again: it may have appeared while the figures were drawn
            shutil.rmtree(out_dir)
        build.rename(out_dir)
    finally:
        shutil.rmtree(build, ignore_errors=True)


def _figures_of(studies) -> list:
    """The studies' figures, each once, in the order of FIGURES."""
    named = {name for study in studies for name in study.figures}
    return [figure for figure in FIGURES if figure.name in named]


def _draw_figures(figures, history, runs, layers, folder: Path):
    """Each figure of the finished runs (frames.finished): a run stopped early would end its
    curve, and move a caption's ratio, at whatever step it stopped."""
    drawn, skipped = {}, {}
    shown = finished(runs)
    if not shown.any():  # not a question of probes or axes
        states = ", ".join(f"{n} {status.lower()}" for status, n in runs["status"].value_counts().items())
        return drawn, {figure.name: f"no run of the selection finished ({states})" for figure in figures}
    ids = set(runs.loc[shown, "run_id"])
    history, runs, layers = (frame[frame["run_id"].isin(ids)] for frame in (history, runs.loc[shown], layers))
    for figure in figures:
        try:
            fig, finding = figure.draw(history, runs, layers)
        except Skip as reason:
            skipped[figure.name] = str(reason)
            continue
        fig.savefig(folder / f"{figure.stem}.png", dpi=DPI, metadata=PNG_METADATA)
        fig.savefig(folder / f"{figure.stem}.pdf", metadata=PDF_METADATA)
        plt.close(fig)
        drawn[figure.stem] = f"{figure.caption} {finding}".strip()
    return drawn, skipped


def _intro(selection, left_out: str) -> str:
    return (f"{len(selection.runs)} runs" + (f" of sweep {selection.name} (parent run {selection.parent.info.run_id})"
                                             if selection.parent else "")
            + (f". The figures draw the finished runs only; left out: {left_out}." if left_out else ""))


def _first_config(client, runs, frame: pd.DataFrame) -> tuple | None:
    """(name, resolved config, what the other jobs differ in) of the first job by job number
    that logged its config; frame: the runs as runs_frame reads them."""
    params = as_text(frame[[c for c in frame.columns if c.startswith("param.")]])
    varied = {c[len("param."):]: sorted(params[c].unique(), key=_numbers_first)
              for c in params.columns if params[c].nunique() > 1}
    differences = ("The others differ in " + "; ".join(f"{key} ({', '.join(values)})" for key, values in varied.items())
                   + "." if varied else "The others have the same config.")
    for run in sorted(runs, key=_job_number):
        try:
            text = Path(client.download_artifacts(run.info.run_id, "config_resolved.yaml")).read_text()
        except (MlflowException, OSError):
            continue
        return run.info.run_name, text, differences
    return None


def _numbers_first(value: str):
    """Numbers by value (8 before 14), then words."""
    try:
        return 0, float(value), ""
    except ValueError:
        return 1, 0.0, value


def _job_number(run) -> int:
    value = run.data.tags.get(contract.JOB_NUM, "")
    return int(value) if value.isdigit() else 1 << 62  # a job number from the store may be anything


def _index(selection, intro: str, drawn: dict, skipped: dict, table: pd.DataFrame, flow: pd.DataFrame,
           claims: pd.DataFrame) -> str:
    lines = [f"# Report: {selection.name}", "", intro.replace(selection.name, f"`{selection.name}`", 1),
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
              "Losses are cross-entropy; accuracies and shift scores are fractions. A run at chance on the "
              "invariance probes' sample has invariance scores that say nothing (a net that predicts one class is "
              "perfectly invariant); the claims leave it out. Full precision in `summary.csv`.", ""]
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
