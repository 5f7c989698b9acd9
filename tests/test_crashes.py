"""A trial that kills its process (a kernel's segfault, the OOM killer): on a worker (parallel.workers > 1,
or parallel.isolate=true) it is recorded as failed with its signal and phase and the run goes on; in the
tuning process it is recorded as failed by the resume after its second such death. The fake framework's
`crash_ops` kill the process with a real signal (os.kill) in quantize or evaluate."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lpot_research.quant.space import config_id
from lpot_research.run.crashes import FaultLog, fatal_signals, pool_exit_signals, signal_text
from lpot_research.run.history import History, TrialRecord

ROOT = Path(__file__).resolve().parents[1]
# stage 2 of basic falls op5 back alone at trial 5: that config (and no other of the first 6) crashes
CRASHING = [f"hydra.searchpath=[file://{ROOT / 'tests' / 'conf'}]", "framework=fake", "model=fake",
            "framework.crash_ops=[op5]", "framework.crash_dtype=bf16", "strategy.stage2=trials",
            "exit_policy.max_trials=6"]
CRASH_TRIAL = 5


def tune(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "tune.py"), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def trials(run: Path) -> list[tuple[str, str, str | None]]:
    return [(t.config_id, t.status, t.error) for t in History.read(run).trials]


@pytest.mark.parametrize(("where", "sig", "phase"), [
    ("parallel.isolate=true", signal.SIGSEGV, "quantize"),
    ("parallel.workers=2", signal.SIGSEGV, "evaluate"),
    ("parallel.isolate=true", signal.SIGKILL, "evaluate"),  # the OOM killer's signal
], ids=["isolated-segv-quantize", "two-workers-segv-evaluate", "isolated-sigkill-evaluate"])
def test_a_trial_that_kills_its_worker_is_recorded_as_failed_and_the_run_goes_on(tmp_path, where, sig, phase):
    r = tune([*CRASHING, where, f"framework.crash_signal={int(sig)}", f"framework.crash_in={phase}",
              f"hydra.run.dir={tmp_path}"])
    assert r.returncode == 0, r.stderr[-3000:]
    got = trials(tmp_path)
    assert len(got) == 6, "the run went on after the crash, to max_trials"
    assert [status for _, status, _ in got] == ["ok"] * 4 + ["failed", "ok"]
    assert got[CRASH_TRIAL - 1][2] == f"killed by signal {int(sig)} ({sig.name}) during {phase}"
    assert "its worker is replaced" in r.stdout + r.stderr


def test_a_trial_that_kills_the_tuning_process_twice_is_recorded_as_failed_by_the_next_resume(tmp_path):
    serial = tmp_path / "serial"
    first = tune([*CRASHING, f"hydra.run.dir={serial}"])
    assert first.returncode == -signal.SIGSEGV, first.stderr[-3000:]
    h = History.read(serial)
    assert len(h.trials) == CRASH_TRIAL - 1
    (crashed,) = [cid for cid in h._attempts if h.cut_short(cid)]
    assert h.cut_short(crashed)[0]["phase"] == "quantize"
    assert list(fatal_signals(serial / "faults.log").values()) == [signal.SIGSEGV]

    second = tune([*CRASHING, f"resume={serial}"])  # a first crash is said, and the trial runs again
    assert second.returncode == -signal.SIGSEGV, second.stderr[-3000:]
    assert "killed the tuning process last time (signal 11 (SIGSEGV) during quantize)" in second.stdout + second.stderr

    third = tune([*CRASHING, f"resume={serial}"])
    assert third.returncode == 0, third.stderr[-3000:]
    got = trials(serial)
    assert got[CRASH_TRIAL - 1] == (crashed, "failed", "killed the tuning process 2 times, last by signal 11 "
                                                        "(SIGSEGV) during quantize; not run again")
    # the same run as one whose trials are isolated: the same configs, the crashing one failed
    isolated = tmp_path / "isolated"
    assert tune([*CRASHING, "parallel.isolate=true", f"hydra.run.dir={isolated}"]).returncode == 0
    assert [(c, s) for c, s, _ in got] == [(c, s) for c, s, _ in trials(isolated)]


def test_attempts_cut_short_are_the_ones_no_record_follows(tmp_path):
    h = History(tmp_path, "key")
    h.start()
    h.add_attempt(1, config_id({}), "quantize")
    assert h.cut_short(config_id({})) == [], "this process's own attempt is not a crash"
    lines = [
        '{"kind": "attempt", "trial": 2, "config_id": "b", "phase": "quantize", "pid": 1}',
        '{"kind": "attempt", "trial": 2, "config_id": "b", "phase": "evaluate", "pid": 1}',  # same process
        '{"kind": "attempt", "trial": 2, "config_id": "b", "phase": "quantize", "pid": 2}',
        '{"kind": "attempt", "trial": 2, "config_id": "c", "phase": "evaluate", "pid": 3}',
        '{"kind": "stopped", "trial": 2, "config_id": "c", "reason": "interrupted"}',  # Ctrl-C is no crash
    ]
    with open(tmp_path / History.FILENAME, "a") as f:
        f.write("\n".join(lines) + "\n")
    again = History(tmp_path, "key")
    assert [(a["pid"], a["phase"]) for a in again.cut_short("b")] == [(1, "evaluate"), (2, "quantize")]
    assert again.cut_short("c") == []
    h.add(TrialRecord(trial=1, config_id=config_id({}), config={}, status="ok"))  # a record ends the attempt
    h.add_attempt(2, "d", "evaluate")
    h.add_stopped({"trial": 2, "config_id": "d", "reason": "timeout"})
    assert not {config_id({}), "d"} & set(History(tmp_path, "key")._attempts), "a trial or stopped line closes attempts"



def test_fatal_signals_are_read_per_process(tmp_path):
    log = tmp_path / "faults.log"
    code = ("import os, signal, sys; from pathlib import Path; from lpot_research.run.crashes import FaultLog; "
            f"FaultLog(Path({str(log)!r})); os.kill(os.getpid(), signal.{{}})")
    for sig in ("SIGFPE", "SIGABRT"):
        p = subprocess.run([sys.executable, "-c", code.format(sig)], cwd=ROOT, capture_output=True)
        assert p.returncode == -getattr(signal, sig)
    quiet = FaultLog(log)  # a process that ends well leaves only its header
    quiet.close()
    assert sorted(fatal_signals(log).values()) == sorted([signal.SIGFPE, signal.SIGABRT])
    assert os.getpid() not in fatal_signals(log)
    assert pool_exit_signals("The exit codes of the workers are {SIGSEGV(-11), SIGKILL(-9)}") == [11, 9]
    assert signal_text(None).startswith("a signal it could not record (SIGKILL")
