"""Background training jobs for the app.

Training runs minutes to hours, longer than any script run: Streamlit reruns the page script on every
click, so the work must live outside it. A :class:`JobManager` (held in ``st.cache_resource`` by the
sidebar, one per server process) runs at most one training at a time in a daemon thread; the UI only
reads snapshots of the job's state, and the stop button sets the ``threading.Event`` that
:func:`mildnet.training.train` checks between batches.

No streamlit here, so the manager is tested without an app.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

from mildnet.errors import MildnetError

log = logging.getLogger(__name__)

RUNNING, COMPLETED, STOPPED, FAILED = "running", "completed", "stopped", "failed"


@dataclass
class JobState:
    """A consistent copy of a job's progress, safe to render from the script thread."""

    job_id: int
    label: str
    state: str = RUNNING
    phase: str = "starting"  # starting | training | finished
    epoch: int = 0
    total_epochs: int = 0
    step: int = 0
    steps_per_epoch: int = 0
    running: dict = field(default_factory=dict)  # loss / accuracy of the epoch so far
    history: list = field(default_factory=list)  # finished epochs' rows
    run_dir: str | None = None
    owner: str | None = None  # the browser session that started the job: only it switches to the new run
    error: str | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None

    @property
    def active(self) -> bool:
        return self.state == RUNNING

    @property
    def fraction(self) -> float:
        """Overall progress in [0, 1] (finished epochs plus the running epoch's share)."""
        if not self.total_epochs:
            return 0.0
        done = len(self.history)
        part = self.step / self.steps_per_epoch if self.steps_per_epoch and self.epoch > done else 0.0
        return max(0.0, min(1.0, (done + part) / self.total_epochs))

    @property
    def elapsed(self) -> float:
        return (self.finished or time.time()) - self.started


class _Progress:
    """The training callback: copies progress into the job under its lock (called from the worker thread)."""

    def __init__(self, job: "Job"):
        self.job = job

    def on_train_begin(self, total_epochs: int, steps_per_epoch: int) -> None:
        with self.job.lock:
            s = self.job.state
            s.phase, s.total_epochs, s.steps_per_epoch = "training", int(total_epochs), int(steps_per_epoch)
            s.epoch = len(s.history) + 1

    def on_batch_end(self, epoch: int, step: int, logs: dict) -> None:
        with self.job.lock:
            s = self.job.state
            s.epoch, s.step = int(epoch), int(step)
            s.steps_per_epoch = int(logs.get("steps") or s.steps_per_epoch)
            s.running = {k: float(v) for k, v in logs.items() if k in ("loss", "accuracy")}

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        with self.job.lock:
            self.job.state.history.append({"epoch": int(epoch), **logs})

    def on_train_end(self, result) -> None:
        with self.job.lock:
            self.job.state.run_dir = str(getattr(result, "run_dir", "") or self.job.state.run_dir or "")


class Job:
    def __init__(self, job_id: int, label: str, target: Callable, run_dir: str | None, owner: str | None = None):
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.state = JobState(job_id=job_id, label=label, run_dir=run_dir, owner=owner)
        self._target = target
        self.thread = threading.Thread(target=self._run, name=f"mildnet-train-{job_id}", daemon=True)

    def _run(self) -> None:
        try:
            result = self._target([_Progress(self)], self.stop_event)
            status = getattr(result, "status", COMPLETED)
            with self.lock:
                self.state.state = STOPPED if status == "stopped" else COMPLETED
                if getattr(result, "run_dir", None):
                    self.state.run_dir = str(result.run_dir)
        except MildnetError as exc:
            with self.lock:
                self.state.state, self.state.error = FAILED, str(exc)
        except Exception as exc:  # a bug must not kill the server thread silently; the UI shows one line
            log.error("training job %s failed:\n%s", self.state.job_id, traceback.format_exc())
            with self.lock:
                self.state.state = FAILED
                self.state.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        finally:
            with self.lock:
                self.state.phase = "finished"
                self.state.finished = time.time()

    def snapshot(self) -> JobState:
        with self.lock:
            s = self.state
            return dataclasses.replace(s, running=dict(s.running), history=[dict(r) for r in s.history])

    def stop(self) -> None:
        self.stop_event.set()


class JobManager:
    """At most one training job per process; earlier jobs are kept for their final status."""

    def __init__(self):
        self._lock = threading.Lock()
        self._jobs: list[Job] = []

    def start(self, label: str, target: Callable, run_dir: str | None = None, owner: str | None = None) -> Job:
        """Starts ``target(callbacks, stop_event)`` in a thread; MildnetError if a job is running. ``owner``
        names the session that started it (see JobState.owner)."""
        with self._lock:
            current = self._jobs[-1] if self._jobs else None
            if current is not None and current.thread.is_alive():
                raise MildnetError(
                    f"a training job is already running ({current.state.label}); stop it or wait for it to finish"
                )
            job = Job(len(self._jobs) + 1, label, target, run_dir, owner)
            self._jobs.append(job)
            job.thread.start()
            return job

    def current(self) -> Job | None:
        with self._lock:
            return self._jobs[-1] if self._jobs else None

    def busy(self) -> bool:
        job = self.current()
        return job is not None and job.thread.is_alive()

    def stop(self) -> bool:
        job = self.current()
        if job is None or not job.thread.is_alive():
            return False
        job.stop()
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until the current job ends (tests and shutdown); True if it has."""
        job = self.current()
        if job is None:
            return True
        job.thread.join(timeout)
        return not job.thread.is_alive()
