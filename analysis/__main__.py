"""`python -m analysis`: not built yet; the report generator arrives with its own issue."""

import sys

if __name__ == "__main__":
    sys.exit("python -m analysis is not implemented yet: browse runs with `mlflow ui` (see README)")
