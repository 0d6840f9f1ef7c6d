"""report.html: the whole report in one file, figures embedded, so it opens the same from disk,
attached to an e-mail, or in the MLflow UI's artifact viewer (which shows HTML but does not
resolve a Markdown file's relative image links)."""

import base64
import html
from pathlib import Path

import pandas as pd

from analysis.claims import interval_text
from analysis.intervals import CONFIDENCE

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1050px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
figure { margin: 2em 0; }
figure img { width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-style: italic; margin-top: 0.4em; }
.holds { color: #1a7f37; font-weight: bold; } .does-not-hold { color: #b42318; font-weight: bold; }
.budget-too-short, .inconclusive { color: #8a6d00; font-weight: bold; }
pre { background: #f6f8fa; padding: 1em; overflow-x: auto; font-size: 0.8em; }
"""


def write_html(path: Path, title: str, intro: str, folder: Path, drawn: dict, skipped: dict, claims_rule: str,
               claims: pd.DataFrame, flow: list, summary: pd.DataFrame, runs: list, run_url, config: tuple) -> None:
    """drawn: {figure stem: caption} of the PNGs in `folder`; flow: the Gradient flow section's
    Markdown lines (claims.gradient_flow_markdown; [] where none); runs: (name, run id) in the
    order of the summary; run_url(run_id): the run's page in the MLflow UI; config: (the first
    job's name, its resolved config, what the others differ in), or None."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>",
             f"<style>{STYLE}</style></head><body>", f"<h1>{_e(title)}</h1>", f"<p>{_e(intro)}</p>"]
    if not claims.empty:
        parts += ["<h2>Claims</h2>", f"<p>{_e(claims_rule)}</p>"]
        for study, rows in claims.groupby("study", sort=False):
            parts.append(f"<h3>{_e(study)}</h3>")
            parts.append(_table(["claim", "measured", "arm A", "", "arm B", f"A - B, {CONFIDENCE:.0%} interval",
                                 "verdict", "why"], [
                [r.claim + (f" ({r.where})" if r.where else ""), r.quantity, r.a, r.relation, r.b,
                 interval_text(r._asdict()), f"<span class='{r.verdict.split(' (')[0].replace(' ', '-')}'>"
                 f"{_e(r.verdict)}</span>", r.why]
                for r in rows.itertuples()], raw_column=6))
    parts.append("<h2>Figures</h2>")
    for stem, caption in drawn.items():
        image = base64.b64encode((folder / f"{stem}.png").read_bytes()).decode()
        parts.append(f"<figure id='{stem}'><img alt='{_e(caption)}' src='data:image/png;base64,{image}'>"
                     f"<figcaption>{_e(caption)}</figcaption></figure>")
    if skipped:
        parts.append("<p>Not drawn:</p><ul>" + "".join(f"<li>{_e(n)}: {_e(w)}</li>" for n, w in skipped.items()) + "</ul>")
    parts += _markdown_section(flow)
    parts += ["<h2>Runs</h2>", _table(list(summary.drop(columns="run_id").columns), [
        [f"<a href='{_e(run_url(run_id))}' target='_top'>{_e(name)}</a>", *[_cell(v) for v in row]]
        for (name, run_id), row in zip(runs, summary.drop(columns=["run_id", "run"]).itertuples(index=False))],
        raw_column=0)]
    if config:
        name, text, differences = config
        parts += ["<h2>Config</h2>", f"<p>The resolved config of the first job, {_e(name)}. "
                  f"{_e(differences)}</p>", f"<pre>{_e(text)}</pre>"]
    parts.append("</body></html>")
    path.write_text("\n".join(parts))


def _markdown_section(lines: list) -> list:
    """The few Markdown forms a report section uses (a heading, paragraphs, a list, `code`) as HTML."""
    parts, items = [], []
    for line in [*lines, ""]:
        if line.startswith("- "):
            items.append(f"<li>{_code(line[2:])}</li>")
            continue
        if items:
            parts.append("<ul>" + "".join(items) + "</ul>")
            items = []
        if line.startswith("## "):
            parts.append(f"<h2>{_e(line[3:])}</h2>")
        elif line:
            parts.append(f"<p>{_code(line)}</p>")
    return parts


def _code(text: str) -> str:
    """Escaped text, its `spans` as <code>."""
    return "".join(f"<code>{_e(piece)}</code>" if i % 2 else _e(piece) for i, piece in enumerate(text.split("`")))


def _table(header: list, rows: list, raw_column: int | None = None) -> str:
    """An HTML table; the cells of raw_column are HTML already, the rest are escaped."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c if i == raw_column else _e(c)}</td>" for i, c in enumerate(row)) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if pd.isna(value) else f"{value:.4f}"
    return str(value)


def _e(text) -> str:
    return html.escape(str(text), quote=True)
