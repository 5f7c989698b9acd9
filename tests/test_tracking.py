"""Experiment tracking: W&B runs of a parallel multirun read back from their offline files, the
tracker finished on failure, and TensorBoard event files read back."""

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lpot_research.run.callbacks import Callback, RunView
from lpot_research.run.history import History
from lpot_research.run.summary import Summary
from lpot_research.run.tracking import Tracker
from tests.fakes import FakeAdaptor, FakeModel, FakeScore
from tests.helpers import LOADER

ROOT = Path(__file__).resolve().parents[1]
FAKE = [f"hydra.searchpath=[file://{ROOT / 'tests' / 'conf'}]", "framework=fake", "model=fake"]


def wandb_records(path: Path):
    """The protobuf records of a W&B offline run file (.wandb): a 7-byte header, then records in a
    LevelDB-style log of 32 KiB blocks (7-byte record headers: crc32, length, type full/first/middle/last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    pos, block, parts = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 2):
            parts = chunk
        elif kind in (3, 4):
            parts += chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(parts)
            yield rec


def read_wandb_run(run_dir: Path, wait_s: float = 10.0) -> dict:
    """The run's records; W&B's core process writes the file after `finish()` returns, so the read is
    repeated (for at most `wait_s`) until the run's exit record is in it."""
    deadline = time.monotonic() + wait_s
    while True:
        run = _read_wandb_file(run_dir)
        if run["exit_code"] is not None or time.monotonic() > deadline:
            return run
        time.sleep(0.1)


def _read_wandb_file(run_dir: Path) -> dict:
    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    run, history, summary, exit_code = None, [], {}, None
    for rec in wandb_records(files[0]):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run = rec.run
        elif kind == "history":
            history.append({".".join(i.nested_key) or i.key: json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            for u in rec.summary.update:
                summary[".".join(u.nested_key) or u.key] = json.loads(u.value_json)
        elif kind == "exit":
            exit_code = rec.exit.exit_code
    return {"run": run, "history": history, "summary": summary, "exit_code": exit_code}


@pytest.mark.skipif(__import__("importlib").util.find_spec("wandb") is None, reason="wandb is not installed")
def test_parallel_multirun_logs_one_wandb_run_per_job(tmp_path):
    sweep = tmp_path / "sweep"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(NETRC=str(tmp_path / "no-netrc"), PYTHONPATH=str(ROOT))  # no credentials: offline by default
    r = subprocess.run([sys.executable, str(ROOT / "tune.py"), "-m", "strategy=basic,random", *FAKE,
                        "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "tracker=wandb", "framework.sleep=0.3",
                        "exit_policy.timeout=60", "exit_policy.max_trials=10", f"hydra.sweep.dir={sweep}"],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = sorted(p.parent for p in sweep.rglob("summary.json"))
    assert len(jobs) == 2
    runs = []
    for job in jobs:
        s = json.loads((job / "summary.json").read_text())
        trials = History.read(job).trials
        w = read_wandb_run(job)
        assert w["run"].display_name == f"{s['strategy']}/fake/fake_model"
        assert w["run"].run_group.startswith("sweep-")
        assert "offline" in str(w["run"].telemetry)
        # one history row per trial, in order, with the trial's own values and best-so-far
        assert [h["trial"] for h in w["history"]] == list(range(1, s["trials"] + 1)) and s["trials"] >= 3
        assert [h.get("accuracy") for h in w["history"]] == pytest.approx([t.accuracy for t in trials])
        best_so_far = [h["best/accuracy"] for h in w["history"]]
        assert best_so_far[-1] == pytest.approx(s["best"]["accuracy"])
        assert [h["passed"] for h in w["history"]] == [int(t.passed) for t in trials]
        # each row carries the latency ratio the trial had when it was logged: a passing trial is benchmarked
        # before, a failing one is not (only later, if a report needs it: random passes none here, and its best
        # effort is measured at the end, so the summary has a ratio and no row does)
        for h, t in zip(w["history"], trials, strict=True):
            want = pytest.approx(t.metrics["latency_ratio"]) if t.passed else None
            assert h.get("latency_ratio") == want, (s["strategy"], h, t)
        assert s["strategy"] != "basic" or any(t.passed for t in trials)  # basic passes at trial 10
        assert s["best"]["latency_ratio"] > 0
        assert w["summary"]["best/latency_ratio"] == pytest.approx(s["best"]["latency_ratio"])
        # the summary: baseline, best, trials, stop reason
        assert w["summary"]["baseline/accuracy"] == pytest.approx(s["baseline"]["accuracy"])
        assert w["summary"]["best/accuracy"] == pytest.approx(s["best"]["accuracy"])
        assert w["summary"]["trials"] == s["trials"] and w["summary"]["stop_reason"] == s["stop_reason"]
        assert w["exit_code"] == 0
        runs.append((w["run"], s))
    a, b = runs
    assert a[0].run_id != b[0].run_id and a[0].run_group == b[0].run_group
    # the two jobs ran at the same time (joblib processes), not one after the other
    start = [r.start_time.seconds + r.start_time.nanos / 1e9 for r, _ in runs]
    end = [t + s["elapsed_s"] for t, (_, s) in zip(start, runs, strict=True)]
    assert start[0] < end[1] and start[1] < end[0], (start, end)


@pytest.mark.skipif(__import__("importlib").util.find_spec("wandb") is None, reason="wandb is not installed")
def test_wandb_run_is_finished_when_the_job_is_interrupted(tmp_path, monkeypatch):
    import lpot_research
    from lpot_research.run.tracking import WandbTracker

    monkeypatch.setenv("WANDB_MODE", "offline")
    calls = []

    def evaluate(model):
        calls.append(model)
        if len(calls) > 2:  # the baseline and the first trial succeed, then the evaluation breaks
            raise KeyboardInterrupt
        return 0.9

    res = lpot_research.tune(FakeModel(None), LOADER, LOADER, eval_func=evaluate, framework=FakeAdaptor(),
                             tracker=WandbTracker(), output_dir=tmp_path, exit_policy={"timeout": 60})
    assert res.interrupted and res.summary.stop_reason == "interrupted (Ctrl-C)"
    w = read_wandb_run(tmp_path)
    assert w["exit_code"] == 1  # not a complete run
    assert [h["trial"] for h in w["history"]] == [1]


def test_tensorboard_event_files_hold_each_op_per_trial(tmp_path):
    pytest.importorskip("tensorboardX", reason="the tensorboard extra is not installed")
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                             reason="tensorboard is not installed")
    import lpot_research

    r = lpot_research.tune(FakeModel(None), LOADER, LOADER, eval_func=lambda m: 0.95, framework=FakeAdaptor(),
                           output_dir=tmp_path, config={"tensorboard": True},
                           exit_policy={"timeout": 60, "max_trials": 3})
    acc = ea.EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={ea.HISTOGRAMS: 0, ea.SCALARS: 0})
    acc.Reload()
    tags = acc.Tags()
    ops = [f"op_output/op{i}" for i in range(4)]  # the fake model has four ops
    assert sorted(tags["histograms"]) == ops
    steps = [e.step for e in acc.Histograms("op_output/op0")]
    assert steps == [0, 1, 2, 3] and r.summary.trials == 3
    h = acc.Histograms("op_output/op0")
    assert all(e.histogram_value.num > 0 for e in h)
    assert [e.value for e in acc.Scalars("accuracy")] == pytest.approx([0.95] * 4)


class Recorder(Tracker):
    """A tracker that records what the tuner reports."""

    def __init__(self):
        self.calls = []

    def start(self, names, config, run_dir):
        self.calls.append(("start", names["strategy"]))

    def log_baseline(self, baseline):
        self.calls.append(("baseline", baseline["accuracy"]))

    def log_trial(self, trial):
        self.calls.append(("trial", trial["trial"], trial["best/accuracy"]))

    def log_summary(self, summary):
        self.calls.append(("summary", summary.trials))

    def finish(self, failed=False):
        self.calls.append(("finish", failed))


def test_resumed_run_replays_finished_trials_to_the_tracker(tmp_path):
    import lpot_research

    def run(max_trials):
        rec = Recorder()
        lpot_research.tune(FakeModel(None), LOADER, LOADER, FakeScore(), framework=FakeAdaptor(), strategy="random",
                           tracker=rec, output_dir=tmp_path, exit_policy={"timeout": 600, "max_trials": max_trials},
                           resume=max_trials > 2)
        return rec.calls

    first = run(2)
    assert [c[0] for c in first] == ["start", "baseline", "trial", "trial", "summary", "finish"]
    second = run(4)
    trials = [c for c in second if c[0] == "trial"]
    assert [c[1] for c in trials] == [1, 2, 3, 4]  # 1 and 2 replayed from history, 3 and 4 evaluated
    assert trials[:2] == [c for c in first if c[0] == "trial"]  # the same values, best-so-far included
    assert second[-2:] == [("summary", 4), ("finish", False)]


class Watcher(Callback):
    """A user callback: what it is given of the run at each call."""

    def __init__(self):
        self.seen = []

    def on_start(self, run):
        self.seen.append(("start", run, dict(run.baseline), run.evaluation))

    def on_baseline(self, run, baseline):
        self.seen.append(("baseline", run, baseline, run.evaluation))

    def on_trial(self, run, rec, best, model, replayed):
        assert run.history.trials[-1] is rec and rec.trial == len(run.history.trials)
        self.seen.append(("trial", run, rec.trial, replayed))

    def on_finish(self, run, summary):
        self.seen.append(("finish", run, summary))


def test_callbacks_see_a_read_only_view_and_the_typed_summary(tmp_path):
    import dataclasses

    import lpot_research

    w = Watcher()
    res = lpot_research.tune(FakeModel(None), LOADER, LOADER, FakeScore(), framework=FakeAdaptor(), strategy="random",
                             callbacks=[w], output_dir=tmp_path, exit_policy={"timeout": 600, "max_trials": 2})
    assert [x[0] for x in w.seen] == ["start", "baseline", "trial", "trial", "finish"]
    views = [x[1] for x in w.seen]
    assert all(isinstance(v, RunView) for v in views)
    start, after = views[0], views[1]
    assert w.seen[0][2:] == ({}, None)  # before the baseline: none yet
    assert after.baseline is w.seen[1][2] and after.baseline["accuracy"] == res.summary.baseline["accuracy"]
    assert all(v is after for v in views[1:])  # one view from the baseline on
    assert start.names == after.names == {"strategy": "random", "framework": "fake", "model": "model"}
    assert after.out == tmp_path and after.workers == 1 and after.exit.max_trials == 2
    assert dataclasses.asdict(after.evaluation) == res.summary.evaluation.to_dict()
    with pytest.raises(dataclasses.FrozenInstanceError):
        after.baseline = {}
    summary = w.seen[-1][2]
    assert isinstance(summary, Summary) and summary is res.summary
    assert summary.to_dict() == json.loads((tmp_path / "summary.json").read_text())
    assert set(after.op_outputs(None)) == set(after.space.op_names)  # the FP32 build's per-op outputs
