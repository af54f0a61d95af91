"""The life cycle of an experiment's run, apart from the store: signals, retries, the run file.

What :mod:`experiments.tracking` needs to start or resume, finish, fail or kill an MLflow run,
without talking to MLflow itself (tracking does that):

- **Preemption.** SIGTERM (what SLURM, Kubernetes and ``kill`` send) raises :class:`Preempted`
  in the main thread inside :func:`preemption_signals`; Ctrl-C raises ``KeyboardInterrupt`` as
  usual. Either ends the run as ``KILLED`` with a ``preempted`` tag, a note (the run's
  description, ``mlflow.note.content``) and ``preempted.txt`` saying how to resume. Under
  submitit (SLURM), which ignores SIGTERM and checkpoints and requeues the job on its own
  signal (``USR2``), that signal is recorded on its way to submitit's handler, so the exit it
  causes ends the run as ``KILLED`` too.
- **Resumption.** The run id is kept in ``<run dir>/mlflow_run.json``; a rerun in the same
  folder (same ``hydra.run.dir``, or a requeued submitit job) continues that run: it goes back
  to ``RUNNING``, then ``FINISHED``, and the training and evaluation pick up from their
  checkpoints in the same folder.
- **Many writers.** Creating, resuming and ending runs is retried with exponential backoff
  when a SQLite store answers "database is locked" (MLflow already waits 20 s per statement,
  ``PRAGMA busy_timeout``); a team should still share an ``mlflow server``.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from defenses.storage import atomic_write_json

logger = logging.getLogger(__name__)

RUN_FILE = "mlflow_run.json"
NOTE_TAG = "mlflow.note.content"
T = TypeVar("T")


class Preempted(BaseException):
    """Raised in the main thread when the process gets SIGTERM (see :func:`preemption_signals`).

    A ``BaseException``, like ``KeyboardInterrupt``, so ``except Exception`` does not swallow
    it. ``exit_code`` is the shell's convention for death by that signal (143 for SIGTERM).
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        self.exit_code = 128 + self.signum
        super().__init__(f"received {signal.Signals(self.signum).name}")


# ---------------------------------------------------------------------------------- signals

_seen_signals: list[str] = []


def _raise_preempted(signum: int, frame: FrameType | None) -> None:
    _seen_signals.append(signal.Signals(signum).name)
    if len(_seen_signals) == 1:
        raise Preempted(signum)
    logger.warning("%s again: already ending the run", signal.Signals(signum).name)


def _submitit_signal() -> signal.Signals | None:
    """Submitit's checkpoint-and-requeue signal when running inside a submitit job."""
    if "SUBMITIT_EXECUTOR" not in os.environ and "SUBMITIT_FOLDER" not in os.environ:
        return None
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG")
    return getattr(signal.Signals, f"SIG{name}", None)


def _recording(previous: Callable[[int, FrameType | None], Any]) -> Callable[..., Any]:
    def handler(signum: int, frame: FrameType | None) -> Any:
        _seen_signals.append(signal.Signals(signum).name)
        return previous(signum, frame)

    return handler


@contextlib.contextmanager
def preemption_signals() -> Iterator[None]:
    """Turn SIGTERM into :class:`Preempted` inside the block (main thread only; restored after).

    A SIGTERM handler someone else installed (submitit's, which ignores it because it requeues
    on its own signal) is left alone; submitit's own signal is recorded on its way to its
    handler, so :func:`interruption` recognises the exit it causes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _seen_signals.clear()
    saved: dict[int, Any] = {}
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        saved[signal.SIGTERM] = signal.signal(signal.SIGTERM, _raise_preempted)
    usr = _submitit_signal()
    if usr is not None and callable(previous := signal.getsignal(usr)):
        saved[usr] = signal.signal(usr, _recording(previous))
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def interruption(err: BaseException) -> str | None:
    """The signal name when ``err`` ends a run that was interrupted, else None (a failure)."""
    if isinstance(err, Preempted):
        return signal.Signals(err.signum).name
    if isinstance(err, KeyboardInterrupt):
        return "SIGINT"
    if isinstance(err, SystemExit) and _seen_signals:
        return _seen_signals[-1]
    return None


# ------------------------------------------------------------------------------- retries


def is_locked(err: BaseException) -> bool:
    """Whether ``err`` is SQLite's "database is locked" (worth retrying)."""
    return "database is locked" in str(err)


def retry_locked(
    fn: Callable[..., T], *args: Any, attempts: int = 6, delay_s: float = 0.5, **kwargs: Any
) -> T:
    """``fn(*args, **kwargs)``, retried with exponential backoff while the store is locked.

    An error is retried when :func:`is_locked` says so (MLflow raises ``MlflowException`` with
    SQLite's message); any other error propagates at once.

    Raises:
        Exception: Any other error of ``fn``, or the "locked" one after ``attempts`` tries.
    """
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            if not is_locked(err) or attempt == attempts - 1:
                raise
            wait = delay_s * 2**attempt
            logger.warning("tracking store locked; retrying %s in %.1f s", fn.__name__, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


# ---------------------------------------------------------------------- resumable runs


def read_run_file(run_dir: Path | None) -> dict[str, Any] | None:
    """The run record ``{"run_id", "tracking_uri"}`` kept in ``run_dir`` (None without one)."""
    if run_dir is None or not (run_dir / RUN_FILE).is_file():
        return None
    return json.loads((run_dir / RUN_FILE).read_text())


def write_run_file(run_dir: Path, run_id: str, uri: str) -> None:
    """Keep the run id in ``run_dir / mlflow_run.json``, so a rerun there resumes the run."""
    atomic_write_json(run_dir / RUN_FILE, {"run_id": run_id, "tracking_uri": uri}, indent=2)


def resume_note(previous: str) -> str:
    """A resumed run's note: its note so far, then when it was resumed."""
    return f"{previous}\nResumed at {_now()}.".strip()


def kill_note(signal_name: str, run_dir: Path | None) -> str:
    """What a killed run's note says: when, by what, and how to resume."""
    how = resume_hint(run_dir)
    return (
        f"Interrupted by {signal_name} at {_now()} (preempted or stopped). To resume: {how}. "
        "Training continues from the last epoch checkpoint and evaluation from its finished "
        "batches, in this same run."
    )


def resume_hint(run_dir: Path | None) -> str:
    """How to rerun this job in the same folder (``hydra.run.dir`` or ``hydra.sweep.dir``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        sweep_dir = Path(HydraConfig.get().sweep.dir).resolve()
        return f"rerun the same sweep with hydra.sweep.dir={sweep_dir}"
    if run_dir is None:
        return "rerun the same command (nothing was saved to resume from)"
    command = " ".join(["python -m experiments.run", *sys.argv[1:]])
    return f"rerun the same command with hydra.run.dir={run_dir.resolve()} (was: {command})"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def error_text(err: BaseException) -> str:
    """The traceback of ``err`` (a failed run's ``error.txt``)."""
    return "".join(traceback.format_exception(type(err), err, err.__traceback__))


__all__ = [
    "NOTE_TAG",
    "RUN_FILE",
    "Preempted",
    "error_text",
    "interruption",
    "is_locked",
    "kill_note",
    "preemption_signals",
    "read_run_file",
    "resume_hint",
    "resume_note",
    "retry_locked",
    "write_run_file",
]
