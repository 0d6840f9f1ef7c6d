"""What the analysis commands share: where the project is, the address of the MLflow UI, and
how a failure ends a command (one line, an exit code)."""

import os
import sys
import traceback
import urllib.parse
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def guarded(uri: str, timeout: float, action) -> int:
    """Run action() against the store at uri: a bad selection or destination (HarnessError) is
    one line on stderr and exit 2, a store that does not answer one line and exit 1; tracebacks
    never show a password in a URI."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bar per downloaded file
    from harness.errors import HarnessError  # after --help: what the store needs imports slowly
    from harness.tracking.store import STORE_ERRORS, _first_line, bound_http_retries, redact

    sys.excepthook = lambda *error: sys.stderr.write(redact("".join(traceback.format_exception(*error))))
    if uri.startswith(("http://", "https://")):
        bound_http_retries(timeout)
    try:
        return action()
    except HarnessError as e:
        print(f"error: {redact(' '.join(str(e).splitlines()))}", file=sys.stderr)  # a name from the store may hold a newline
        return 2
    except STORE_ERRORS as e:
        print(f"error: cannot use the MLflow store {redact(uri)}: {_first_line(e)}", file=sys.stderr)
        return 1


def ui_address(uri: str, ui: str | None) -> str:
    """Where report.html links the runs: --ui, else the server the store is, else `mlflow ui`'s default."""
    return ui or (_without_credentials(uri) if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000")


def _without_credentials(url: str) -> str:
    """A server URI as a link a report may show: no user or password in it."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=host))



