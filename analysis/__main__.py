"""`python -m analysis`: regenerate the report figures of a sweep from MLflow.

    python -m analysis                          # the most recent sweep in runs/mlflow.db
    python -m analysis --sweep 2026-11-23/10-41-45-a6e099
    python -m analysis --experiment optimizers --filter "params.trainer.epochs = '30'"

Writes runs/report/<sweep>/ (PNG and PDF figures, summary.csv, index.md) and logs it to
the sweep's parent run as artifacts under report/.
"""

import argparse
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__.splitlines()[0])
    parser.add_argument("--uri", default=f"sqlite:///{PROJECT_ROOT}/runs/mlflow.db", help="MLflow tracking URI")
    parser.add_argument("--sweep", help="sweep id (as in the parent run's name) or parent run id")
    parser.add_argument("--experiment", help="all finished runs of this experiment")
    parser.add_argument("--filter", help="an MLflow filter string, e.g. \"params.model.depth = '20'\"")
    parser.add_argument("--out", type=Path, help="report folder (default: runs/report/<sweep or experiment>)")
    args = parser.parse_args(argv)

    from analysis.load import SelectionError, open_client, select_runs  # after --help: mlflow imports slowly
    from analysis.report import write_report

    try:
        client = open_client(args.uri)
        selection = select_runs(client, args.sweep, args.experiment, args.filter)
    except SelectionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or PROJECT_ROOT / "runs" / "report" / selection.name
    results = write_report(client, args.uri, selection, out)
    for name, note in results.items():
        print(f"{name}: {note}")
    print(f"report of {len(selection.runs)} runs: {out / 'index.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
