"""How a job learns it must stop: SIGTERM (what SLURM and `kill` send) and SIGINT (Ctrl-C) do
not stop the process at once; they ask the training loop to stop at the next step boundary,
where it writes a checkpoint, sends the metrics and ends the run as KILLED. A second signal
stops at once. In a job submitit runs on SLURM, SIGUSR2 (submitit's warning before the time
limit or a preemption) does the same, and is then passed on to submitit, which requeues the job.

Apart from the checkpoint (harness.jobs.checkpoint), so that what only needs to know a job was
stopped (tracking, the sweep) does not import the training loop's state.
"""

import os
import signal
import threading
import time

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
REPEAT_WINDOW_S = 2.0  # a signal this soon after the first is the same request (Ctrl-C reaches a process twice)


class Interrupted(Exception):
    """Training stopped at a step boundary because a stop was requested."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def in_submitit_job() -> bool:
    return "SUBMITIT_FOLDER" in os.environ  # set by submitit's job runner


class StopRequests:
    """While entered (in the main thread), SIGTERM and SIGINT (and SIGUSR2 in a submitit job)
    set `signal` instead of stopping the process; another one, more than REPEAT_WINDOW_S later,
    raises KeyboardInterrupt. A handler that was there before and is marked `chain` (the
    sweep's, harness.jobs.sweep) is called too; `pass_on` calls any other one afterwards."""

    def __init__(self):
        self.signal, self.since = None, 0.0
        self.previous = {}

    def pass_on(self, signum: int) -> None:
        """Hand a signal to the handler it had before (submitit's requeue for SIGUSR2)."""
        previous = self.previous.get(signum)
        if callable(previous):
            previous(signum, None)

    def _handle(self, signum, frame):
        previous = self.previous.get(signum)
        if getattr(previous, "chain", False):
            previous(signum, frame)
        if self.signal is None:
            self.signal, self.since = signum, time.monotonic()
        elif time.monotonic() - self.since > REPEAT_WINDOW_S:
            raise KeyboardInterrupt

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS + ((signal.SIGUSR2,) if in_submitit_job() else ()):
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}
