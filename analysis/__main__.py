"""`python -m analysis`: regenerate the report figures of a sweep from MLflow.

    python -m analysis                          # the most recent sweep in runs/mlflow.db
    python -m analysis --sweep 2026-11-23/10-41-45-a6e099
    python -m analysis --experiment optimizers --filter "params.trainer.epochs = '30'"

Writes runs/report/<sweep>/ (PNG and PDF figures, summary.csv, index.md) and logs it to
the sweep's parent run as artifacts under report/.
"""

import argparse
import os
import sys
import urllib.parse
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__.splitlines()[0])
    parser.add_argument("--uri", default=f"sqlite:///{PROJECT_ROOT}/runs/mlflow.db", help="MLflow tracking URI")
    parser.add_argument("--sweep", help="sweep id (2026-11-23/10-41-45-a6e099, or its time part as in the parent run's name), parent run name or id")
    parser.add_argument("--experiment", help="all finished runs of this experiment")
    parser.add_argument("--filter", help="an MLflow filter string, e.g. \"params.model.depth = '20'\"")
    parser.add_argument("--out", type=Path, help="report folder (default: runs/report/<sweep or experiment>)")
    parser.add_argument("--ui", help="the MLflow UI's address, for report.html's links to runs "
                                     "(default: the --uri of a server, else http://127.0.0.1:5000 as `mlflow ui` serves)")
    args = parser.parse_args(argv)

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bar per downloaded file
    from analysis.load import SelectionError, open_client, select_runs  # after --help: mlflow imports slowly
    from analysis.report import write_report

    try:
        client = open_client(args.uri)
        selection = select_runs(client, args.sweep, args.experiment, args.filter)
    except SelectionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or PROJECT_ROOT / "runs" / "report" / selection.name
    ui = args.ui or (_without_credentials(args.uri) if args.uri.startswith(("http://", "https://"))
                     else "http://127.0.0.1:5000")
    results = write_report(client, args.uri, selection, out, ui)
    for name, note in results.items():
        print(f"{name}: {note}")
    print(f"report of {len(selection.runs)} runs: {out / 'index.md'}")
    return 0


def _without_credentials(url: str) -> str:
    """A server URI as a link a report may show: no user or password in it."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=host))


if __name__ == "__main__":
    sys.exit(main())
