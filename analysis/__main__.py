"""`python -m analysis`: regenerate the report figures of a sweep from MLflow.

    python -m analysis                          # the most recent sweep in runs/mlflow.db
    python -m analysis --sweep 2026-11-23/10-41-45-a6e099
    python -m analysis --experiment optimizers --filter "params.trainer.epochs = '30'"

Writes runs/report/<sweep>/ (PNG and PDF figures, summary.csv, index.md) and logs it to
the sweep's parent run as artifacts under report/. A bad selection, a report folder that
cannot be written or a store that does not answer is one line on stderr and a non-zero exit.
"""

import argparse
import sys
from pathlib import Path

from analysis.cli import PROJECT_ROOT, guarded, ui_address


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__.splitlines()[0])
    parser.add_argument("--uri", default=f"sqlite:///{PROJECT_ROOT}/runs/mlflow.db", help="MLflow tracking URI")
    parser.add_argument("--sweep", help="sweep id (2026-11-23/10-41-45-a6e099, or its time part as in the parent run's name), parent run name or id")
    parser.add_argument("--experiment", help="all finished runs of this experiment")
    parser.add_argument("--filter", help="an MLflow filter string, e.g. \"params.model.depth = '20'\"")
    parser.add_argument("--reports", type=Path, default=PROJECT_ROOT / "runs" / "report",
                        help="where reports go, each in REPORTS/<sweep or experiment> (default: runs/report)")
    parser.add_argument("--out", type=Path, help="the report folder itself, instead (replaced only if it holds a report)")
    parser.add_argument("--ui", help="the MLflow UI's address, for report.html's links to runs "
                                     "(default: the --uri of a server, else http://127.0.0.1:5000 as `mlflow ui` serves)")
    parser.add_argument("--timeout", type=float, default=60,
                        help="seconds a tracking server may take to answer before analysis gives up (default 60, "
                             "as the jobs' tracking.timeout)")
    args = parser.parse_args(argv)
    return guarded(args.uri, args.timeout, lambda: _report(args))


def _report(args) -> int:
    from analysis.load import open_client, select_runs
    from analysis.report import report_folder, write_report

    client = open_client(args.uri)
    selection = select_runs(client, args.sweep, args.experiment, args.filter)
    out = args.out or report_folder(args.reports, selection.name)
    results = write_report(client, args.uri, selection, out, ui_address(args.uri, args.ui))
    for name, note in results.items():
        print(f"{name}: {note}")
    print(f"report of {len(selection.runs)} runs: {out / 'index.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
