"""`python -m analysis.results`: the results page (docs/results.md) from a set of sweeps.

    python -m analysis.results --sweep 2026-12-03/10-31-52-c0de74 [--sweep ...] [--uri URI]
    python -m analysis.results --add --sweep ID [--uri ANOTHER_STORE] [--drop OLD_ID]

Per sweep, each study of its preset: the command that produced it, the machine, the wall
time, the claims table (the verdicts of the sweep's own report, which this writes as
`python -m analysis --sweep` does), the study's key figure, and a note where a verdict says
the opposite of the literature. The figures go to docs/results/, a folder replaced whole.
With --add, the page keeps the sections of other sweeps (and their figures) and gains these
sweeps' sections, replacing their own: sweeps from several stores (a CPU and a GPU machine) on
one page, each generated from its store; --drop takes a sweep's section off the page (a study
run again, whose old store is gone).
"""

import argparse
import re
import shutil
import sys
from pathlib import Path

import pandas as pd

from analysis.cli import PROJECT_ROOT, guarded, ui_address
from harness.files import write_atomically

DEFAULT_PAGE = PROJECT_ROOT / "docs" / "results.md"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.results", description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="append", required=True,
                        help="a sweep id, parent run name or id (repeat for each sweep, in the page's order)")
    parser.add_argument("--uri", default=f"sqlite:///{PROJECT_ROOT}/runs/mlflow.db", help="MLflow tracking URI")
    parser.add_argument("--out", type=Path, default=DEFAULT_PAGE,
                        help="the page (default docs/results.md); its figures go to the folder of its name")
    parser.add_argument("--reports", type=Path, default=PROJECT_ROOT / "runs" / "report",
                        help="where each sweep's full report goes (default: runs/report)")
    parser.add_argument("--add", action="store_true",
                        help="keep the page's sections of other sweeps (from other stores); replace these sweeps' own")
    parser.add_argument("--drop", action="append", default=[], metavar="SWEEP_ID",
                        help="with --add: take this sweep's section (as the page names it) off the page")
    args = parser.parse_args(argv)
    if args.drop and not args.add:
        parser.error("--drop works with --add: it takes a section off the page --add keeps")
    return guarded(args.uri, 60, lambda: _results(args))


def _results(args) -> int:
    from analysis.load import open_client, select_runs
    from analysis.report import check_replaceable, report_folder, swapped_in, write_report

    figure_folder = args.out.with_suffix("")
    check_replaceable(figure_folder)  # before any report is written: nothing half done
    client = open_client(args.uri)
    selections = [select_runs(client, sweep) for sweep in args.sweep]
    swept = " ".join(f"--sweep {_code(sweep)}" for sweep in args.sweep)
    dropped = "".join(f" --drop {_code(sweep)}" for sweep in args.drop)
    command = f"`python -m analysis.results {'--add ' if args.add else ''}{swept}{dropped}`"
    commands, sections, figures = [command], [], {}
    if args.add:
        earlier, sections, figures = kept_from(args.out, {selection.name for selection in selections}, set(args.drop))
        commands = [*earlier, command]
    for selection in selections:
        report = report_folder(args.reports, selection.name)
        write_report(client, args.uri, selection, report, ui_address(args.uri, None))
        text, shown = sweep_sections(selection, report, figure_folder.name)
        sections.append(text)
        figures.update(shown)
    with swapped_in(figure_folder) as folder:
        for name, source in figures.items():
            shutil.copyfile(source, folder / name)  # a kept section's figure: from the old folder, replaced only after
        write_atomically(args.out, page(commands, sections))
    print(f"results of {len(args.sweep)} sweeps: {args.out}")
    return 0


GENERATED = re.compile(r"^Generated from the runs by (.+?); do not edit by hand\.", re.MULTILINE)
SECTION_SWEEP = re.compile(r"harness [^,\n]*, sweep `([^`\n]+)`\.")


def kept_from(page_path: Path, replaced: set, dropped: set = frozenset()) -> tuple:
    """(the commands that made the page, its sections of sweeps in neither `replaced` nor
    `dropped`, {figure name: its file} those sections show) of a results page this module
    wrote. A sweep in `dropped` that the page has no section of is an error."""
    from harness.errors import HarnessError

    text = page_path.read_text() if page_path.is_file() else ""
    generated = GENERATED.search(text)
    if generated is None:
        raise HarnessError(f"--add: {page_path} is not a results page python -m analysis.results wrote")
    folder = page_path.with_suffix("")
    sections, figures, on_page = [], {}, set()
    for section in re.split(r"\n(?=## )", text)[1:]:
        sweep = SECTION_SWEEP.search(section)
        if sweep is None:
            continue
        on_page.add(sweep.group(1))
        if sweep.group(1) in replaced | dropped:
            continue
        sections.append(section.rstrip("\n") + "\n")
        for name in re.findall(rf"\]\({re.escape(folder.name)}/([A-Za-z0-9._-]+\.png)\)", section):
            if (folder / name).is_file():  # names as _safe makes them: no path leaves the folder
                figures[name] = folder / name
    missing = sorted(dropped - on_page)
    if missing:
        raise HarnessError(f"--drop {missing[0]}: {page_path} has no section of that sweep")
    return re.split(r", then (?=`)", generated.group(1)), sections, figures


def page(commands: list, sections: list) -> str:
    from analysis.claims import RULE

    return "\n".join([
        "# Results", "",
        f"Generated from the runs by {', then '.join(commands)}; do not edit by hand. Each "
        "section is one sweep: the command that ran it, where, how long, and what its claims tables say. "
        "The full report of a sweep (every figure, the runs table, the gradient flow) is what "
        "`python -m analysis --sweep <id>` writes.", "",
        "How a verdict is reached: " + RULE, "", *sections])


def sweep_sections(selection, report: Path, figure_folder: str) -> tuple:
    """(markdown of each study of the sweep, {figure file name: its source}) from the sweep's
    report folder, which write_report has just written."""
    from analysis import studies as all_studies
    from analysis.claims import claims_table
    from analysis.figures import BY_NAME

    try:
        claims = pd.read_csv(report / "claims.csv")
    except pd.errors.EmptyDataError:  # no claim the runs speak to
        claims = pd.DataFrame(columns=["study"])
    runs, parent = selection.runs, selection.parent
    lines, figures = [], {}
    for study in all_studies.of_preset(selection.preset):
        rows = claims[claims["study"] == study.name]
        if rows.empty:
            continue
        lines += [f"## {study.name}, {_budget(runs)}", "", _provenance(parent, runs), ""]
        lines += [*claims_table(rows), ""]
        figure = BY_NAME[study.key_figure]
        source = report / f"{figure.stem}.png"
        if source.is_file():
            name = f"{_safe(selection.name)}-{figure.stem}.png"
            figures[name] = source
            lines += [f"![{figure.caption}]({figure_folder}/{name})", "", f"*{figure.caption}*", ""]
        lines += _literature(study, rows, runs)
    return "\n".join(lines), figures


def _provenance(parent, runs) -> str:
    """Command, machine, wall time and outcome counts of a sweep, from its parent run's tags."""
    from harness import contract

    tags = parent.data.tags if parent is not None else {}
    command = f"python -m harness -m {tags.get(contract.OVERRIDES, '')}".strip()
    devices = sorted({f"{r.data.tags.get('device', '?')}, {r.data.tags.get('precision', '?')}" for r in runs})
    outcomes = pd.Series([r.data.tags.get(contract.OUTCOME, r.info.status.lower()) for r in runs]).value_counts()
    wall = "still running"
    if parent is not None and parent.info.end_time:
        wall = _duration(parent.info.end_time - parent.info.start_time)
    trained = _duration(sum(r.info.end_time - r.info.start_time for r in runs if r.info.end_time))
    commit = tags.get("git_commit", "unknown")[:7] + (" (uncommitted changes)" if tags.get("git_dirty") == "true" else "")
    return (f"`{_code(command)}`: {len(runs)} jobs ({', '.join(f'{n} {o}' for o, n in outcomes.items())}), "
            f"{wall} wall time (the jobs' runs {trained} together) on {'; '.join(_code(d) for d in devices)}; harness "
            f"{_code(commit)}, sweep "
            f"`{_code(tags.get(contract.SWEEP_ID, '?'))}`.")


def _duration(milliseconds: int) -> str:
    minutes, seconds = divmod(round(milliseconds / 1000), 60)
    return f"{minutes} min {seconds} s"


def _literature(study, rows: pd.DataFrame, runs) -> list:
    """The study's source, and a note on each claim whose verdict says the opposite."""
    from analysis.claims import DOES_NOT_HOLD

    lines = [f"Literature: {study.literature}."]
    against = rows[rows["verdict"] == DOES_NOT_HOLD]
    if not against.empty:
        budget = _budget(runs)
        for row in against.itertuples():
            lines.append(f"- **Disagrees with the literature**: *{row.claim}* does not hold here. Why it might: "
                         f"these runs trained {budget}, far less than the work cited; a claim about training "
                         "may hold only later in training, and a small net or subset may behave otherwise.")
    return [*lines, ""]


def _budget(runs) -> str:
    """`15 epochs of 10000 images` (or `12 steps of 32 images`), as the runs' params say."""
    params = runs[0].data.params if runs else {}
    steps, epochs = params.get("trainer.steps", "None"), params.get("trainer.epochs", "?")
    if steps not in ("None", "null", "", "0"):
        return f"{steps} steps of {params.get('trainer.batch_size', '?')} images"
    images = params.get("data.train_subset", "None")
    images = images if images not in ("None", "null", "", "0") else params.get("data.train_size", "all the")
    return f"{epochs} epochs of {images} images"


def _code(text: str) -> str:
    """Text from the store inside `code`: no backtick or line break can end it."""
    return re.sub(r"[`\r\n|]", "_", str(text))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")[:80] or "sweep"


if __name__ == "__main__":
    sys.exit(main())
