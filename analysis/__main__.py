"""`python -m analysis`: regenerate the report figures of a sweep from MLflow.

    python -m analysis                          # the most recent sweep in runs/mlflow.db
    python -m analysis --sweep 2026-11-23/10-41-45-a6e099
    python -m analysis --experiment optimizers --filter "params.trainer.epochs = '30'"

Writes runs/report/<sweep>/ (PNG and PDF figures, summary.csv, index.md) and logs it to
the sweep's parent run as artifacts under report/. A bad selection, a report folder that
cannot be written or a store that does not answer is one line on stderr and a non-zero exit.
"""

import argparse
import os
import sys
import traceback
import urllib.parse
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


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

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bar per downloaded file
    from analysis.load import open_client, select_runs  # after --help: mlflow imports slowly
    from analysis.report import report_folder, write_report
    from harness.errors import HarnessError
    from harness.tracking.store import STORE_ERRORS, _first_line, bound_http_retries, redact

    sys.excepthook = lambda *error: sys.stderr.write(redact("".join(traceback.format_exception(*error))))
    if args.uri.startswith(("http://", "https://")):
        bound_http_retries(args.timeout)
    try:
        client = open_client(args.uri)
        selection = select_runs(client, args.sweep, args.experiment, args.filter)
        out = args.out or report_folder(args.reports, selection.name)
        ui = args.ui or (_without_credentials(args.uri) if args.uri.startswith(("http://", "https://"))
                         else "http://127.0.0.1:5000")
        results = write_report(client, args.uri, selection, out, ui)
    except HarnessError as e:
        print(f"error: {redact(' '.join(str(e).splitlines()))}", file=sys.stderr)  # a name from the store may hold a newline
        return 2
    except STORE_ERRORS as e:
        print(f"error: cannot use the MLflow store {redact(args.uri)}: {_first_line(e)}", file=sys.stderr)
        return 1
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
