"""Trials that kill the process running them: a segfault or abort in a framework kernel, the OOM killer.

Nothing in the dying process can record such a death, so two records are kept beforehand and read after:
- a trial's phase (quantize, evaluate) is written before it starts: as an `attempt` line of the history
  when the trial runs in the tuning process, or as a small file of the worker's when it runs on one;
- Python's faulthandler writes the fatal signal (SIGSEGV, SIGFPE, SIGABRT, SIGBUS, SIGILL) of the process
  to a file: `faults.log` in the run dir for the tuning process, one file per worker process. SIGKILL
  (the OOM killer, `kill -9`) cannot be caught and leaves no such line.

A worker's death is known at once (its pool breaks), and its trial is recorded as failed. The tuning
process's own death is known when the run is resumed: a trial whose attempts were cut short twice is
recorded as failed instead of run a third time (`parallel.isolate=true` runs each trial on a worker of its
own, so the first crash is recorded and the run goes on).
"""

from __future__ import annotations

import faulthandler
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import IO, Any

FAULTS_LOG = "faults.log"  # in the run dir: the tuning processes' fatal signals
CRASHES_TO_FAIL = 2  # a trial cut short this many times in the tuning process is recorded as failed
_HEADER = "== lpot-research process "
# faulthandler's "Fatal Python error: <what>" for each signal it handles
_FATAL = {"Segmentation fault": signal.SIGSEGV, "Floating-point exception": signal.SIGFPE,
          "Floating point exception": signal.SIGFPE, "Aborted": signal.SIGABRT, "Bus error": signal.SIGBUS,
          "Illegal instruction": signal.SIGILL}


def signal_text(sig: int | None) -> str:
    """e.g. "signal 11 (SIGSEGV)"; None: a signal that left no record (SIGKILL cannot be caught)."""
    if sig is None:
        return "a signal it could not record (SIGKILL: the OOM killer or kill -9)"
    try:
        return f"signal {sig} ({signal.Signals(sig).name})"
    except ValueError:
        return f"signal {sig}"


class FaultLog:
    """The fatal signal of this process, written by faulthandler to `path` under a header naming the
    process; `close()` restores faulthandler as it was (a library call must not keep it)."""

    def __init__(self, path: Path) -> None:
        self.was_enabled = faulthandler.is_enabled()
        self.file: IO[str] | None = open(path, "a", encoding="utf-8")  # noqa: SIM115 - held for the process
        self.file.write(f"{_HEADER}{os.getpid()}\n")
        self.file.flush()
        faulthandler.enable(file=self.file, all_threads=False)

    def close(self) -> None:
        if self.file is None:
            return
        faulthandler.disable()
        if self.was_enabled:
            faulthandler.enable(file=sys.__stderr__ or sys.stderr)
        self.file.close()
        self.file = None


def fatal_signals(path: Path) -> dict[int, int]:
    """The fatal signal of each process that wrote `path` (a FaultLog) and died of one, by PID."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    out: dict[int, int] = {}
    pid = None
    for line in text.splitlines():
        if line.startswith(_HEADER):
            tail = line[len(_HEADER):].strip()
            pid = int(tail) if tail.isdigit() else None
        elif pid is not None and line.startswith("Fatal Python error: "):
            what = line[len("Fatal Python error: "):].strip()
            if what in _FATAL:
                out[pid] = int(_FATAL[what])
    return out


# ------------------------------------------------------------------------------------------ on a worker
class WorkerMarks:
    """A worker's trace in a directory the tuning process reads when a worker dies: `task-<pid>.json`
    (the trial and phase it runs now) and `fault-<pid>.log` (its fatal signal)."""

    def __init__(self, directory: str) -> None:
        self.dir = Path(directory)
        self.pid = os.getpid()
        self.faults = FaultLog(self.dir / f"fault-{self.pid}.log")

    def phase(self, n: int, config_id: str, phase: str) -> None:
        tmp = self.dir / f".task-{self.pid}.tmp"
        tmp.write_text(json.dumps({"trial": n, "config_id": config_id, "phase": phase}))
        os.replace(tmp, self.dir / f"task-{self.pid}.json")

    def done(self) -> None:
        (self.dir / f"task-{self.pid}.json").unlink(missing_ok=True)


def dead_worker_trials(directory: str) -> dict[str, dict[str, Any]]:
    """By config id: the trials the workers writing to `directory` were running (phase, and the signal
    when their worker recorded one); the task files are removed (the pool they describe is gone)."""
    d = Path(directory)
    out: dict[str, dict[str, Any]] = {}
    for task in d.glob("task-*.json"):
        pid = int(task.stem.split("-", 1)[1])
        try:
            info = json.loads(task.read_text())
        except (OSError, ValueError):
            continue
        sig = fatal_signals(d / f"fault-{pid}.log").get(pid)
        out[str(info["config_id"])] = {"phase": info.get("phase", "?"), "signal": sig}
        task.unlink(missing_ok=True)
    return out


def pool_exit_signals(message: str) -> list[int]:
    """The signals in a broken loky pool's message ("The exit codes of the workers are {SIGSEGV(-11)}")."""
    return [-int(code) for code in re.findall(r"SIG[A-Z]+\((-\d+)\)", message)]


__all__ = ["CRASHES_TO_FAIL", "FAULTS_LOG", "FaultLog", "WorkerMarks", "dead_worker_trials", "fatal_signals",
           "pool_exit_signals", "signal_text"]
