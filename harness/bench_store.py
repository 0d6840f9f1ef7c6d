"""What one tracking store sustains: `python -m harness.bench_store --uri URI [--writers 1,2,4,8]`

N writer processes at once, each with a run of its own, send metric points with
MlflowClient.log_batch, `--batch` points a call (a job sends one such batch per epoch),
for `--seconds`; printed: metric points per second summed over the writers, and the median
and 95th-percentile time of one call, for each N. Run it against a SQLite file
(sqlite:////abs/path.db) or an `mlflow server` (http://HOST:PORT) with its backend of choice.
"""

import argparse
import multiprocessing
import statistics
import time

from harness import contract


def write(uri: str, experiment_id: str, batch: int, seconds: float, ready, results) -> None:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    run_id = client.create_run(experiment_id).info.run_id
    keys = [f"{contract.GRAD_NORM}{i:03d}_layer" for i in range(100)]
    step, latencies = 0, []
    ready.wait(timeout=300)  # every writer has imported MLflow and made its run: the window opens for all at once
    start_at = time.time()
    while time.time() < start_at + seconds:
        now = int(time.time() * 1000)
        points = [Metric(keys[i % len(keys)], float(i), now, step + i // len(keys)) for i in range(batch)]
        began = time.perf_counter()
        client.log_batch(run_id, metrics=points, synchronous=True)
        latencies.append(time.perf_counter() - began)
        step += batch // len(keys) + 1
    client.set_terminated(run_id)
    results.put((len(latencies) * batch, latencies))


def measure(uri: str, experiment_id: str, writers: int, batch: int, seconds: float) -> tuple:
    """(points per second over all writers, median call seconds, 95th-percentile call seconds)."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    ready = context.Barrier(writers)
    processes = [context.Process(target=write, args=(uri, experiment_id, batch, seconds, ready, results))
                 for _ in range(writers)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=seconds + 300) for _ in processes]
    for process in processes:
        process.join()
    latencies = sorted(t for _, calls in outcomes for t in calls)
    return (sum(points for points, _ in outcomes) / seconds, statistics.median(latencies),
            latencies[int(0.95 * (len(latencies) - 1))])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uri", required=True)
    parser.add_argument("--writers", default="1,2,4,8")
    parser.add_argument("--batch", type=int, default=1000, help="metric points per log_batch call")
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args(argv)

    from harness.tracking.store import open_experiment, redact

    _, experiment_id = open_experiment(args.uri, "bench_store")
    print(f"{redact(args.uri)}: log_batch of {args.batch} points, {args.seconds:g} s per measurement")
    print(f"{'writers':>8s} {'points/s':>12s} {'median call':>12s} {'p95 call':>10s}")
    for writers in (int(n) for n in args.writers.split(",")):
        rate, median, p95 = measure(args.uri, experiment_id, writers, args.batch, args.seconds)
        print(f"{writers:8d} {rate:12,.0f} {1000 * median:10.0f} ms {1000 * p95:7.0f} ms", flush=True)


if __name__ == "__main__":
    main()
