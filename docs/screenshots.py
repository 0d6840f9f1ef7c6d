"""The screenshots of the MLflow UI in docs/tracking.md, taken from a real `mlflow ui` by headless Chromium.

    python docs/screenshots.py [--uri sqlite:////abs/runs/mlflow.db] [--out docs]

Serves the store with `mlflow ui` on a free port of 127.0.0.1, opens the most recent sweep's
experiment (its runs table), the sweep's first job, the report.html in the sweep's artifacts
(run `python -m analysis` first), the sweep's own page and the job's Model metrics tab, and
writes one PNG per page. Needs chromium (apt install chromium) and playwright (the dev extra).
"""

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient

PROJECT_ROOT = Path(__file__).resolve().parents[1]
VIEWPORT = {"width": 1400, "height": 850}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(uri: str, port: int) -> subprocess.Popen:
    ui = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                           "--port", str(port), "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
    for _ in range(120):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return ui
        except OSError:
            time.sleep(0.5)
    ui.kill()
    raise SystemExit(f"error: mlflow ui did not start on port {port}")


def show(page, url: str, path: Path, expand: bool = False) -> None:
    page.goto(url)
    page.wait_for_load_state("load")
    time.sleep(6)  # the UI fetches its data after loading (and polls: it is never idle)
    close = page.get_by_role("button", name="Close")
    if close.count():
        close.first.click()  # the assistant panel a new browser opens with
    if expand:  # show the sweep's jobs under its parent run
        page.locator("button[data-component-id*='runnamecellrenderer']").first.click()
        time.sleep(2)
    page.screenshot(path=str(path))
    print(f"{path}: {url}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uri", default=f"sqlite:///{PROJECT_ROOT}/runs/mlflow.db")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    client = MlflowClient(args.uri)
    sweeps = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.kind = 'sweep'",
                                order_by=["attributes.start_time DESC"], max_results=1)
    if not sweeps:
        print(f"error: no sweep in {args.uri}: run one first (python -m harness -m ...)", file=sys.stderr)
        return 2
    parent = sweeps[0]
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    ui = serve(args.uri, port)
    base = f"http://127.0.0.1:{port}/#/experiments/{parent.info.experiment_id}"
    mode = "?workflowType=machine_learning"  # the UI's "Model training" view (its default is GenAI)
    job = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
                             order_by=["attributes.start_time ASC"], max_results=1)[0]
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = browser.new_page(viewport=VIEWPORT)
            show(page, f"{base}/runs{mode}", args.out / "ui-1-runs.png", expand=True)
            show(page, f"{base}/runs/{job.info.run_id}{mode}", args.out / "ui-2-job-run.png")
            show(page, f"{base}/runs/{parent.info.run_id}/artifacts/report/report.html{mode}",
                 args.out / "ui-3-report.png")
            show(page, f"{base}/runs/{parent.info.run_id}{mode}", args.out / "ui-4-sweep-run.png")
            show(page, f"{base}/runs/{job.info.run_id}/model-metrics{mode}", args.out / "ui-5-job-metrics.png")
            browser.close()
    finally:
        ui.terminate()
        ui.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
