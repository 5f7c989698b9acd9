"""One run dir, one writer (lpot_research.run.lock): two processes starting or resuming the same run dir at
once, and the lock of a killed process taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lpot_research.core.errors import ConfigError
from lpot_research.run.history import History
from lpot_research.run.lock import RunLock
from tests.helpers import history_so_far

ROOT = Path(__file__).resolve().parents[1]
# a fake run of ~12 trials x 0.3 s: long enough that two processes started together overlap
FAKE = [f"hydra.searchpath=[file://{ROOT / 'tests' / 'conf'}]", "framework=fake", "model=fake",
        "framework.names=[a,b,c,d]", "framework.sleep=0.3", "objective=modelsize", "exit_policy.timeout=600",
        "exit_policy.max_trials=12", "strategy=random", "random_seed=1"]
IN_USE = "is in use by another run (pid "


def tune_py(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "tune.py"), *args], cwd=ROOT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def one_writer(run: Path, procs: list[subprocess.Popen]) -> str:
    """Exactly one process ran (exit 0); the other was refused in one line naming the holder's PID; the
    record is one run's: one header, one baseline, trials 1..n in order. Returns the refusal."""
    outs = [p.communicate(timeout=600) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], (codes, [e[-2000:] for _, e in outs])
    refused = outs[codes.index(2)][1].strip().splitlines()
    assert len(refused) == 1 and IN_USE in refused[0], refused
    pid = int(refused[0].split(IN_USE)[1].split(")")[0])
    assert pid == procs[codes.index(0)].pid
    h = History.read(run)
    assert [t.trial for t in h.trials] == list(range(1, len(h.trials) + 1)) and len(h.trials) == 12
    lines = (run / History.FILENAME).read_text().splitlines()
    assert sum('"kind": "run"' in ln for ln in lines) == 1 and sum('"kind": "baseline"' in ln for ln in lines) == 1
    return refused[0]


def held_elsewhere(run_dir: Path) -> bool:
    """Whether another process is refused the lock of `run_dir` now."""
    code = (f"from lpot_research.run.lock import RunLock; RunLock({str(run_dir)!r}).acquire()")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 or f"{IN_USE}{os.getpid()})" in r.stderr, r.stderr[-2000:]
    return r.returncode != 0


def test_a_process_nests_its_own_lock_and_holds_it_until_the_last_release(tmp_path):
    outer = RunLock(tmp_path).acquire()  # tune.py's, then tune()'s: one process, one holder
    with RunLock(tmp_path):
        assert held_elsewhere(tmp_path)
    assert held_elsewhere(tmp_path)  # the outer holder still has it
    outer.release()
    assert not held_elsewhere(tmp_path)


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path):
    code = (f"from lpot_research.run.lock import RunLock; RunLock({str(tmp_path)!r}).acquire(); "
            "print('held', flush=True); import time; time.sleep(600)")
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.stdout.readline().strip() == "held"
    with pytest.raises(ConfigError, match=rf"pid {p.pid}\)"):
        RunLock(tmp_path).acquire()
    p.send_signal(signal.SIGKILL)
    p.wait()
    RunLock(tmp_path).acquire().release()  # the kernel dropped the dead process's lock


def test_two_runs_started_at_once_in_one_dir_give_one_run(tmp_path):
    run = tmp_path / "run"
    one_writer(run, [tune_py(*FAKE, f"hydra.run.dir={run}") for _ in range(2)])


def test_two_resumes_at_once_give_one_continuation(tmp_path):
    run = tmp_path / "run"
    first = tune_py(*FAKE, f"hydra.run.dir={run}")
    deadline = time.monotonic() + 300
    while (h := history_so_far(run)) is None or len(h.trials) < 2:  # killed after two trials
        assert first.poll() is None and time.monotonic() < deadline, "the first run ended before it was killed"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    one_writer(run, [tune_py(*FAKE, f"resume={run}") for _ in range(2)])
