"""A process that imports the harness once and forks a child per CLI call the tests make.

Every `python -m harness` pays seconds of imports (torch, torch._dynamo, mlflow, hydra) before
it reads its command line: most of a smoke job on a 2-core machine. A child forked from here
starts with those modules loaded and then runs exactly what the interpreter would: the module
as __main__ with the same argv, cwd, environment and stdio, its exit code, its atexit hooks.
It is a real process: it has its own pid and process group and can be signalled. Tests that
need the interpreter's own start-up (a changed PYTHONPATH, another copy of the project, a
terminal) still exec `python -m` themselves.

Protocol, one JSON line each way on stdin/stdout, any number of children at once:
  -> {"id", "module", "args", "cwd", "env", "stdout", "stderr"}   (stdout/stderr: files to write, may be one)
  <- {"id", "pid"}  once the child is started, then  <- {"id", "returncode"}  when it has ended
     (negative: the signal that ended it, as subprocess reports it).
"""

import json
import os
import select
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PRELOADED = ["harness.app", "harness.runs", "torch._dynamo", "analysis.load", "analysis.report",
             # what a job or a report imports only once it opens a store or starts its launcher
             "mlflow.store.tracking.sqlalchemy_store", "mlflow.store.db.utils", "alembic.command",
             "alembic.runtime.migration", "hydra._internal.logging_config", "cryptography.fernet",
             "mako.ext.pygmentplugin", "hydra_plugins.hydra_joblib_launcher.joblib_launcher",
             "hydra_plugins.hydra_submitit_launcher.submitit_launcher"]


def run_child(request: dict) -> None:
    """In the forked child: become `python -m MODULE ARGS`; never returns."""
    import atexit
    import runpy
    import threading
    import traceback

    import numpy as np

    os.setpgid(0, 0)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    np.random.seed()  # a fresh interpreter seeds numpy from the OS; `random` reseeds itself after fork
    stdin = os.open(os.devnull, os.O_RDONLY)
    os.dup2(stdin, 0)
    out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(out, 1)
    if request["stderr"] == request["stdout"]:
        os.dup2(out, 2)  # one file, one offset: the two streams interleave as through one pipe
    else:
        os.dup2(os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 2)
    sys.argv = [request["module"], *request["args"]]
    module = sys.modules.get(request["module"])
    if module is not None and not hasattr(module, "__path__"):  # run as __main__, a module is a copy of its own
        del sys.modules[request["module"]]
    code = 0
    try:
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        if stop.code is None:
            code = 0
        elif isinstance(stop.code, int):
            code = stop.code
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    try:  # what the interpreter does on the way out
        threading._shutdown()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def serve() -> None:
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    requests = os.dup(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)  # stray prints from imports must not corrupt the replies
    import importlib
    for module in PRELOADED:
        importlib.import_module(module)
    replies.write(json.dumps({"ready": True}) + "\n")
    running, pending = {}, b""  # pid -> request id; bytes of a request not yet whole
    while True:
        if select.select([requests], [], [], 0.05 if running else None)[0]:
            chunk = os.read(requests, 65536)
            if not chunk:
                return  # the client has gone
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                request = json.loads(line)
                pid = start_child(request, requests, replies)
                running[pid] = request["id"]
                replies.write(json.dumps({"id": request["id"], "pid": pid}) + "\n")
        while running:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            replies.write(json.dumps({"id": running.pop(pid), "returncode": os.waitstatus_to_exitcode(status)}) + "\n")


def start_child(request: dict, requests: int, replies) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(requests)
        replies.close()
        run_child(request)
    try:
        os.setpgid(pid, pid)  # here too, so the group exists before anyone signals it
    except OSError:  # the child got there first, or has already ended
        pass
    return pid


if __name__ == "__main__":
    sys.path[0] = str(PROJECT_ROOT)  # as `python -m` from the project root, not tests/
    serve()
