"""Processes that use one MLflow store at once, for tests/test_tracking.py (run as
`python -m tests.store_clients open|write URI [WRITER]`, by the fork server):
- open: open (and, if new, create) the store's experiment "race"; print its id;
- write: one run of 10,000 points of metric "x" in 40 flushes of 250, as 40 epochs of a job send them."""

import sys

import torch

from harness.tracking.store import MetricBuffer, open_experiment


def write(uri: str, writer: str) -> None:
    client, experiment_id = open_experiment(uri, "concurrent")
    run_id = client.create_run(experiment_id, tags={"writer": writer}).info.run_id
    buffer = MetricBuffer(client, run_id)
    for step in range(40):
        for i in range(250):
            buffer.add(step * 250 + i, {"x": torch.tensor(float(step * 250 + i))})
        buffer.flush()
    client.set_terminated(run_id)


if __name__ == "__main__":
    if sys.argv[1] == "open":
        print(open_experiment(sys.argv[2], "race")[1])
    else:
        write(*sys.argv[2:])
