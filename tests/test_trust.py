"""Trust under bad input and faults: one clear line before any work, no silent wrong result, runs that
stop cleanly (time budget, Ctrl-C) and say the truth about what they did."""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import lpot_research
from lpot_research.core.errors import ConfigError, DataError
from lpot_research.run.callbacks import Callback
from lpot_research.run.history import History, RunRecordError
from tests.fakes import FakeAdaptor, FakeModel, FakeScore
from tests.helpers import LOADER, run_fake

ROOT = Path(__file__).resolve().parents[1]
FAKE = [f"hydra.searchpath=[file://{ROOT / 'tests' / 'conf'}]", "framework=fake", "model=fake"]


def tune_cli(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tune.py"), *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=timeout)


def lines(text: str) -> list[str]:
    return [x for x in text.splitlines() if x.strip()]


# ---------------------------------------------------------------------------------------------- bad input
BAD = [
    (["exit_policy.max_trials=abc"], "error: exit_policy.max_trials='abc' must be an integer"),
    (["exit_policy.max_trials=-3"], "error: exit_policy.max_trials=-3 must be an int >= 1"),
    (["exit_policy.max_trials=0"], "error: exit_policy.max_trials=0 must be an int >= 1"),
    (["exit_policy.timeout=-1"], "error: exit_policy.timeout=-1.0 must be seconds >= 0"),
    (["accuracy_criterion.tolerance=-0.1"], "error: accuracy_criterion.tolerance=-0.1 must be a finite number >= 0"),
    (["accuracy_criterion.tolerance=1.5"], "error: accuracy_criterion.tolerance=1.5 is a fraction for kind=relative"),
    (["accuracy_criterion.tolerance=nan"], "error: accuracy_criterion.tolerance=nan must be a finite number"),
    (["accuracy_criterion.higher_is_better=maybe"], "error: accuracy_criterion.higher_is_better='maybe' must be true "
                                                    "or false"),
    (["random_seed=x"], "error: random_seed='x' must be an integer"),
    (["threads=-1"], "error: threads=-1 must be an int >= 1"),
    (["threads=abc"], "error: threads='abc' must be an integer"),
    (["threads=0"], "error: threads=0 must be an int >= 1"),
    (["benchmark.iterations=0"], "error: benchmark.iterations=0 must be an int >= 1"),
    (["benchmark.warmup=-1"], "error: benchmark.warmup=-1 must be an int >= 0"),
    (["benchmark.batch_size=0"], "error: benchmark.batch_size=0 must be an int >= 1"),
    (["metric=f1", "metric.average=foo"], "error: metric average='foo' is unknown; valid choices: ['binary', 'macro'"),
    (["objective=weighted", "objective.weights.latency=-1"], "error: objective weight latency=-1 must be a number"),
    (["exit_policy.max_trial=5"], "error: unknown key exit_policy.max_trial; valid keys: timeout, max_trials"),
    (["+exit_policy.max_trial=5"], "error: unknown key exit_policy.max_trial; valid keys: timeout, max_trials"),
    (["+foo=bar"], "error: unknown key foo; valid keys: quantization, accuracy_criterion"),
    (["exit_policy=fast"], "error: exit_policy='fast': exit_policy is a group of settings, not a value; set one of "
                           "them, e.g. exit_policy.timeout=... (keys: timeout, max_trials)"),
    (["hydra/launcher=nope"], "error: unknown hydra/launcher 'nope'; valid launchers: basic, joblib, parallel, ray"),
    (["quantization.approach=nope"], "error: quantization.approach='nope' is unknown; valid choices:"),
    (["quantization.qat.loss=l1"], "error: quantization.qat.loss='l1' is unknown; valid choices: ['cross_entropy'"),
    (["evaluation.ranking_samples=0"], "error: evaluation.ranking_samples=0 must be an int >= 1"),
    (["resume=/nonexistent/run"], "error: resume=/nonexistent/run: no such directory"),
    (["resume=/etc/hostname"], "error: resume=/etc/hostname is a file"),
    (["resume=/tmp"], "error: resume=/tmp holds no run to continue"),
    (["-m", "strategy=basic,mse", "resume=/tmp"], "error: resume=/tmp continues one run; a sweep cannot be resumed"),
    (["parallel.isolate=maybe"], "error: parallel.isolate='maybe' must be true or false"),
    (['quantization.op_wise={"[": {weight: {dtype: fp32}}}'],
     "error: cannot read the override 'quantization.op_wise={\"[\": {weight: {dtype: fp32}}}': no viable alternative"),
    (["hydra.run.dir=/sys/kernel/lpot"], "error: cannot write the run dir /sys/kernel/lpot"),
    (["hydra.run.dir=/etc/hostname/run"], "error: cannot create the run dir /etc/hostname/run: /etc/hostname is a "
                                          "file"),
]


@pytest.mark.parametrize("args,needle", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_configuration_is_one_line_with_status_2_before_any_model_loads(tmp_path, args, needle):
    run_dir = tmp_path / "run"
    extra = [] if any(a.startswith(("hydra.run.dir", "-m")) for a in args) else [f"hydra.run.dir={run_dir}"]
    r = tune_cli(*args, *extra, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    out = lines(r.stderr)
    assert len(out) == 1 and out[0].startswith(needle), r.stderr
    assert not run_dir.exists(), "the run started (its dir was created) before the check"


def test_documented_keys_work_as_written(tmp_path):
    r = tune_cli("quantization.op_wise={fc: {activation: {dtype: [fp32]}}}", "quantization.qat.epochs=2",
                 "exit_policy.max_trials=1", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["best"]["fallback_ops"] == ["fc"]
    resolved = (tmp_path / "config_resolved.yaml").read_text()
    assert "epochs: 2" in resolved


def readme_commands() -> list[list[str]]:
    import shlex

    text = (ROOT / "README.md").read_text()
    cmds, buf = [], ""
    for line in text.splitlines():
        line = line.strip()
        if buf:
            buf += " " + line.rstrip("\\").strip()
        elif line.startswith(("python tune.py", "LOGLEVEL=DEBUG python tune.py")):
            buf = line.rstrip("\\").strip()
        else:
            continue
        if not line.endswith("\\"):
            words = shlex.split(buf.split("#", 1)[0] if " # " in buf else buf)
            cmds.append(words[words.index("tune.py") + 1:])
            buf = ""
    return cmds


def test_every_command_in_the_readme_passes_the_checks():
    from lpot_research.cli import validate

    cmds = readme_commands()
    assert len(cmds) >= 8
    for args in cmds:
        if any("<" in a or a.startswith(("resume=", "model.path=")) for a in args):  # the reader's own paths
            continue
        assert validate(args, ROOT / "conf") is None, args


@pytest.mark.parametrize("bad,needle", [
    ({"bench_batch_size": 0}, "benchmark.batch_size=0 must be an int >= 1"),
    ({"config": {"benchmark": {"batch_size": 0}}}, "benchmark.batch_size=0 must be an int >= 1"),
    ({"metric": object()}, "is not a metric: it lacks"),
    ({"config": {"threads": 0}}, "threads=0 must be an int >= 1"),
    ({"eval_func": lambda m: 0.9}, r"give either eval_func\(model\) -> float or a metric \(FakeScore\), not both"),
    ({"config": 42}, r"config=42 \(int\) is not a mapping of tuning keys; give one"),
    ({"callbacks": [object()]}, r"callbacks\[0\]=<object object at .*> is not a Callback: it lacks on_start, "
                                "on_baseline, on_trial, on_finish, close"),
    ({"callbacks": Callback()}, "callbacks=<.*Callback object .*> must be a list of lpot_research.run.callbacks"),
])
def test_bad_api_input_is_one_clear_error(tmp_path, bad, needle):
    kw = {"metric": FakeScore(), **bad}
    with pytest.raises(ConfigError, match=needle):
        lpot_research.tune(FakeModel(None), LOADER, LOADER, framework=FakeAdaptor(), output_dir=tmp_path, **kw)


def test_bad_data_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="the evaluation dataloader yielded no batch"):
        lpot_research.tune(FakeModel(None), LOADER, [], FakeScore(), framework=FakeAdaptor(), output_dir=tmp_path)
    unlabelled = [np.zeros((4, 3)) for _ in range(2)]  # calibration batches that are inputs only
    with pytest.raises(DataError, match=r"must yield \(inputs, labels\) pairs .* it yielded a ndarray"):
        lpot_research.tune(FakeModel(None), unlabelled, LOADER, FakeScore(), framework=FakeAdaptor(),
                           output_dir=tmp_path / "b")
    with pytest.raises(DataError, match="returned True, a bool"):
        lpot_research.tune(FakeModel(None), LOADER, eval_func=lambda m: True, framework=FakeAdaptor(),
                           output_dir=tmp_path / "c")


# ---------------------------------------------------------------------------------------------- run dirs
def test_a_run_of_another_model_is_never_resumed(tmp_path):
    pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'lpot-research[pytorch]')")
    import torch

    from lpot_research.models.digits import DigitsCNN

    b = DigitsCNN().load()
    cfg = {"exit_policy": {"max_trials": 1}}
    lpot_research.tune(b.model, b.calib_dataloader, b.eval_dataloader, config=cfg, output_dir=tmp_path)
    other = DigitsCNN().trained()
    with torch.no_grad():
        other.fc.weight.mul_(0.5)  # another model of the same architecture and name
    with pytest.raises(ConfigError, match=r"already holds a run \(1 trial\(s\)\); continue it with: "
                                          r"lpot_research.tune\(\.\.\., output_dir='.*', resume=True\)"):
        lpot_research.tune(other, b.calib_dataloader, b.eval_dataloader, config=cfg, output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"different run \(model: [0-9a-f]{16} -> [0-9a-f]{16}"):
        lpot_research.tune(other, b.calib_dataloader, b.eval_dataloader, config=cfg, output_dir=tmp_path,
                           resume=True)
    with pytest.raises(ConfigError, match="holds no run to continue"):
        lpot_research.tune(other, b.calib_dataloader, b.eval_dataloader, output_dir=tmp_path / "new", resume=True)


def test_a_refused_resume_names_the_setting_once(tmp_path):
    run = tmp_path / "run"
    assert tune_cli(*FAKE, "random_seed=1", "exit_policy.max_trials=2", f"hydra.run.dir={run}").returncode == 0
    r = tune_cli(*FAKE, "random_seed=2", "exit_policy.max_trials=2", f"resume={run}")
    assert r.returncode == 2
    out = lines(r.stderr)
    assert len(out) == 1 and "different run (seed: 1 -> 2; strategy.seed: 1 -> 2)" in out[0], r.stderr


class BreakTheDisk(Callback):
    """After trial 2, the history's disk is full (every write fails)."""

    def on_trial(self, run, rec, best, model, replayed):
        if rec.trial == 2:
            p = run.history.path
            p.rename(p.with_name("kept.jsonl"))
            p.symlink_to("/dev/full")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (a device every write to fails)")
def test_a_failing_history_write_is_fatal_and_not_blamed_on_the_strategy(tmp_path):
    with pytest.raises(RunRecordError, match=r"cannot write .*history.jsonl: No space left on device"):
        run_fake(tmp_path, FakeAdaptor(ops=3), "random", {"exit_policy": {"timeout": 60, "max_trials": 6}},
                 callbacks=[BreakTheDisk()])
    assert not (tmp_path / "summary.json").exists()  # no summary claiming what the record does not hold


@pytest.fixture
def full_filesystem(tmp_path):
    """A 64 KiB tmpfs, filled (needs root and mount(8): skipped, saying so, elsewhere)."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("a full filesystem needs root and mount -t tmpfs")
    try:
        with open(mnt / "fill", "wb", buffering=0) as f, pytest.raises(OSError, match="No space left"):
            while True:
                f.write(bytes(4096))
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_new_run_in_a_run_dir_that_holds_one_gives_the_command_that_continues_it(tmp_path):
    args = [*FAKE, "exit_policy.max_trials=2"]
    assert tune_cli(*args, f"hydra.run.dir={tmp_path}").returncode == 0
    again = tune_cli(*args, f"hydra.run.dir={tmp_path}")
    assert again.returncode == 2
    assert lines(again.stderr) == [f"error: '{tmp_path}' already holds a run (2 trial(s)); continue it with: python "
                                   f"tune.py {' '.join(shlex.quote(a) for a in args)} resume={tmp_path}; or start "
                                   "this run in another directory"]


def test_a_run_dir_on_a_full_filesystem_is_one_line(full_filesystem):
    r = tune_cli(*FAKE, f"hydra.run.dir={full_filesystem / 'run'}")
    assert r.returncode == 2
    assert lines(r.stderr) == [f"error: cannot write the run dir {full_filesystem / 'run'}: No space left on device "
                               f"({full_filesystem})"]


# ---------------------------------------------------------------------------------------------- stopping
@pytest.mark.parametrize("forever", [False, True])
def test_the_time_budget_stops_a_trial_and_says_so(tmp_path, forever):
    calls = []

    def eval_func(model):  # the baseline is quick; every trial takes 40 s, or never returns
        calls.append(model.config)
        if model.config is not None:
            while True:
                time.sleep(40)
                if not forever:
                    break
        return 1.0

    t0 = time.perf_counter()
    res = lpot_research.tune(FakeModel(None), LOADER, eval_func=eval_func, framework=FakeAdaptor(),
                             exit_policy={"timeout": 1.5, "max_trials": 10}, output_dir=tmp_path)
    assert time.perf_counter() - t0 < 30  # far below one 40 s evaluation
    s = res.summary
    assert s.trials == 0 and s.stop_reason == "timeout (1.5 s) reached during trial 1, which was stopped"
    assert s.stopped_trials[0]["reason"] == "timeout" and s.stopped_trials[0]["trial"] == 1
    assert History.read(tmp_path).stopped[0]["config_id"] == s.stopped_trials[0]["config_id"]


@pytest.mark.parametrize("sig, code, reason", [(signal.SIGINT, 130, "interrupted (Ctrl-C)"),
                                               (signal.SIGTERM, 143, "terminated (SIGTERM)")],
                         ids=["ctrl-c", "sigterm"])
def test_ctrl_c_and_sigterm_finish_like_a_timeout_and_print_the_resume_command(tmp_path, sig, code, reason):
    run = tmp_path / "run"
    args = [*FAKE, "framework.sleep=0.2", "exit_policy.timeout=600", "exit_policy.max_trials=40"]
    # SIGINT as a terminal delivers it: a test run started in the background (`cmd &` in a script) inherits
    # SIGINT ignored, and Python then installs no KeyboardInterrupt handler
    p = subprocess.Popen([sys.executable, str(ROOT / "tune.py"), *args, f"hydra.run.dir={run}"], cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        try:
            if len(History.read(run).trials) >= 3:
                break
        except RunRecordError:
            pass
        time.sleep(0.05)
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    assert p.returncode == code, (out + err)[-3000:]
    assert "Traceback" not in out + err
    s = json.loads((run / "summary.json").read_text())
    assert s["stop_reason"] == reason and s["trials"] >= 3 and s["best"] is not None
    assert (run / "best_model.txt").exists()
    hint = next(x for x in (out + err).splitlines() if "to continue this run:" in x)
    command = hint.split("to continue this run: ", 1)[1].split()
    assert command[:2] == ["python", "tune.py"] and f"resume={run}" in command
    import shlex

    r = tune_cli(*shlex.split(" ".join(command[2:])))  # the printed command resumes the run as it is
    assert r.returncode == 0, r.stderr[-2000:]
    assert History.read(run).trials[-1].trial > s["trials"]


# ---------------------------------------------------------------------------------------------- the truth
def test_a_model_with_nothing_quantized_is_not_called_faster(tmp_path, caplog):
    caplog.set_level("INFO")
    all_fp32 = {"quantization": {"op_wise": {"op.*": {"activation": {"dtype": ["fp32"]}}}}}
    res = run_fake(tmp_path, FakeAdaptor(ops=3), "basic", all_fp32)
    s = res.summary
    assert s.best.quantized_ops == 0 and s.faster_than_fp32 is False
    assert "quantizes no op" in caplog.text and "faster than FP32" not in caplog.text


def test_a_modelsize_run_reports_the_size_ratio(tmp_path, caplog):
    caplog.set_level("INFO")
    res = run_fake(tmp_path, FakeAdaptor(ops=3, penalties=[0.001] * 3), "basic", objective="modelsize")
    assert "model size ratio: 0.25x" in caplog.text
    assert res.summary.best.size_ratio == pytest.approx(0.25)


def test_dynamic_quantization_does_not_call_unquantizable_ops_fallbacks(tmp_path):
    pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'lpot-research[pytorch]')")
    from lpot_research.models.digits import DigitsCNN

    b = DigitsCNN().load()
    res = lpot_research.tune(b.model, b.calib_dataloader, b.eval_dataloader, output_dir=tmp_path,
                             config={"quantization": {"approach": "post_training_dynamic_quant"},
                                     "exit_policy": {"max_trials": 1}})
    best = res.summary.best
    assert best.fallback_ops == [] and best.quantized_ops == 1
    assert best.unquantizable_ops == [f"features.{i}.0" for i in range(5)]


def test_the_api_prints_its_progress_and_defaults_to_one_thread(tmp_path):
    pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'lpot-research[pytorch]')")
    code = f"""
        import torch
        torch.set_num_threads(2)
        import lpot_research
        from lpot_research.models.digits import DigitsCNN
        b = DigitsCNN().load()
        lpot_research.tune(b.model, b.calib_dataloader, b.eval_dataloader, output_dir={str(tmp_path)!r},
                           config={{"exit_policy": {{"max_trials": 1}}}})
        print("threads", torch.get_num_threads())
    """
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "FP32 baseline: accuracy" in r.stderr and f"run dir {tmp_path}" in r.stderr
    assert f"run dir: {tmp_path}" in r.stderr
    assert "threads 1" in r.stdout


def test_activation_settings_that_dynamic_quantization_ignores_are_named(tmp_path, caplog):
    cfg = {"quantization": {"approach": "post_training_dynamic_quant",
                            "model_wise": {"activation": {"algorithm": "kl"}}}, "exit_policy": {"max_trials": 1}}
    with caplog.at_level(logging.WARNING, logger="lpot_research"):
        lpot_research.tune(FakeModel(None), LOADER, LOADER, FakeScore(), config=cfg, framework=FakeAdaptor(),
                           output_dir=tmp_path)
    assert ("quantization.model_wise.activation.algorithm=kl does nothing with post_training_dynamic_quant"
            in caplog.text)
