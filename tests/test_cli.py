"""The Hydra entry: config composition, one-line errors, a real default run, kill and resume."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from lpot_research.quant.ranking import within_noise
from lpot_research.run.history import History
from tests.helpers import env_without_isa_cap, history_so_far, run_together

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
FAKE = [f"hydra.searchpath=[file://{ROOT / 'tests' / 'conf'}]", "framework=fake", "model=fake"]


def tune(*args, timeout=600, env=None, **kw):
    env = {**(env if env is not None else os.environ), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "tune.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout, **kw)


def groups():
    return {g.name: sorted(p.stem for p in g.glob("*.yaml")) for g in CONF.iterdir() if g.is_dir()}


@pytest.fixture
def hydra_conf():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def test_every_config_composes_and_instantiates(hydra_conf, tmp_path):
    from lpot_research.cli import register_resolvers

    register_resolvers()
    from lpot_research.config import load_settings

    for name in ("m.onnx", "eval.npz", "list.csv"):  # the constructors check that a path exists; none reads it
        (tmp_path / name).write_bytes(b"")
    required = {("model", "file"): [f"model.path={tmp_path / 'm.onnx'}"],  # choices without a usable default
                ("data", "npz"): [f"data.path={tmp_path / 'eval.npz'}"],
                ("data", "files"): [f"data.path={tmp_path / 'list.csv'}"],
                ("data", "image_folder"): [f"data.path={tmp_path}"]}
    for group, choices in groups().items():
        for choice in choices:
            cfg = compose("tune", overrides=[f"{group}={choice}", *required.get((group, choice), [])])
            if "_target_" not in cfg[group]:  # a settings group (accuracy_criterion): the schema takes it
                assert load_settings({group: cfg[group]}).accuracy_criterion.kind == choice
                continue
            obj = instantiate(cfg[group])  # cheap: constructors only store arguments
            cls = f"{type(obj).__module__}.{type(obj).__qualname__}"
            target = cfg[group]._target_
            if target.endswith("pytorch_backends.pytorch_adaptor"):  # a factory: framework.backend picks the class
                assert cls == "lpot_research.adaptors.pytorch_export.PyTorchExportAdaptor", cls
                continue
            assert target == cls or target.startswith(cls + "."), (group, choice, cls)  # or a classmethod of it


@pytest.mark.parametrize("args,needle", [
    (["strategy=nope"], "unknown strategy 'nope'; valid strategies: basic, bayesian, exhaustive, mse, random, tpe"),
    (["framework=caffe"], f"unknown framework 'caffe'; valid frameworks: {', '.join(groups()['framework'])}"),
    (["-m", "strategy=basic,nope"], "unknown strategy 'nope'"),
    (["model=resnet9000"], f"valid models: {', '.join(groups()['model'])}"),
])
def test_unknown_choice_is_one_clear_line(args, needle):
    r = tune(*args, timeout=60)
    assert r.returncode != 0
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and needle in lines[0], r.stderr


def test_bad_value_exits_nonzero_naming_it(tmp_path):
    r = tune(*FAKE, f"hydra.run.dir={tmp_path}", "quantization.model_wise.activation.algorithm=entropy", timeout=120)
    assert r.returncode != 0
    assert "'entropy'" in r.stderr and "valid choices" in r.stderr


def test_default_job_runs_end_to_end(tmp_path):
    r = tune(f"hydra.run.dir={tmp_path}", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((tmp_path / "summary.json").read_text())
    assert (s["strategy"], s["framework"], s["model"]) == ("basic", "pytorch", "digits_cnn")
    assert s["met_criterion"] and s["trials"] >= 1
    best = s["best"]
    assert best["accuracy"] >= s["criterion"]["threshold"] and best["quantized_ops"] > 0
    rec = next(t for t in History.read(tmp_path).trials if t.trial == best["trial"])
    ratio, spread = best["latency_ratio"], best["latency_spread"]
    assert ratio == rec.metrics["latency_ratio"] and 0 < ratio < math.inf  # the best trial's measured ratio
    assert best["latency_ms"] > 0 and best["fp32_latency_ms"] > 0
    log = r.stderr + r.stdout
    assert "CPU: " in log and "FP32 baseline: accuracy" in log
    # which verdict depends on the CPU; it must be the one the measured ratio and its spread give, and only it
    verdicts = {"same": f"as fast as FP32 within measurement noise: latency ratio {ratio:.2f}x",
                "faster": f"INT8/FP32 latency ratio: {ratio:.2f}x",
                "slower": f"SLOWER than FP32: latency ratio {ratio:.2f}x"}
    expected = "same" if within_noise(ratio, spread, 1.0, 0.0) else "faster" if ratio < 1.0 else "slower"
    assert [k for k, line in verdicts.items() if line in log] == [expected], log[-3000:]
    for f in ("history.jsonl", "best_model.pt2", "best_config.yaml", "config_resolved.yaml", ".hydra/config.yaml"):
        assert (tmp_path / f).exists(), f
    v = subprocess.run([sys.executable, str(ROOT / "scripts" / "verify_saved_model.py"), str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert v.returncode == 0 and "MATCH" in v.stdout, v.stdout + v.stderr
    saved = tmp_path / "best_model.pt2"  # cut short, as a copy interrupted midway leaves it: one line
    saved.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    v = subprocess.run([sys.executable, str(ROOT / "scripts" / "verify_saved_model.py"), str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    lines = [x for x in v.stderr.splitlines() if x.strip()]
    assert v.returncode == 1 and len(lines) == 1 and "does not load with pytorch alone" in lines[0], v.stderr


def test_debug_log_level_gives_detail(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "tune.py"), *FAKE, f"hydra.run.dir={tmp_path}"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "LOGLEVEL": "DEBUG"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ops and options" in r.stderr + r.stdout


def _trials(run_dir):
    """The trial records of a run dir, read through History (a missing or corrupt history fails the test)."""
    return History.read(run_dir).trials


def _trials_so_far(run_dir):
    """The trial records of a running run (none before its header line is written)."""
    h = history_so_far(run_dir)
    return h.trials if h is not None else []


def test_killed_run_resumes_without_repeating_a_trial(tmp_path):
    args = [*FAKE, "framework.sleep=0.25", "exit_policy.timeout=600", "random_seed=7"]
    ref = tune(*args, f"hydra.run.dir={tmp_path / 'ref'}", timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]
    ref_trials = _trials(tmp_path / "ref")
    assert len(ref_trials) >= 8

    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, str(ROOT / "tune.py"), *args, f"hydra.run.dir={run}"], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(_trials_so_far(run)) < 4 and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    killed_at = len(_trials(run))
    assert 4 <= killed_at < len(ref_trials), "the kill must land mid-run"

    res = tune(*args, f"resume={run}", timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"{killed_at} finished trial(s) from" in res.stderr + res.stdout
    trials = _trials(run)
    ids = [t.config_id for t in trials]
    assert len(ids) == len(set(ids)), "a trial was evaluated twice"
    assert [t.trial for t in trials] == list(range(1, len(trials) + 1))
    assert ids == [t.config_id for t in ref_trials]
    s, s_ref = (json.loads((d / "summary.json").read_text()) for d in (run, tmp_path / "ref"))
    assert s["best"]["config_id"] == s_ref["best"]["config_id"] and s["met_criterion"] == s_ref["met_criterion"]


def test_custom_strategy_from_the_readme(tmp_path):
    r = tune(*FAKE, "strategy._target_=examples.custom_strategy.GreedyFallback", f"hydra.run.dir={tmp_path}",
             timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["strategy"] == "GreedyFallback" and s["met_criterion"]
    notes = [t.note for t in _trials(tmp_path)]
    assert any(n.startswith("greedy: op5 -> fp32") for n in notes)


def test_sweep_of_all_strategies_and_compare(tmp_path):
    sweep = tmp_path / "sweep"
    r = tune("-m", "strategy=basic,mse,exhaustive,random,bayesian,tpe", *FAKE, "exit_policy.timeout=30",
             "exit_policy.max_trials=8", f"hydra.sweep.dir={sweep}", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    c = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare.py"), str(sweep)], capture_output=True,
                       text=True, cwd=ROOT, timeout=120)
    assert c.returncode == 0, c.stderr
    rows = [line for line in c.stdout.splitlines() if line.split()[:1] and line.split()[0] in
            ("basic", "mse", "exhaustive", "random", "bayesian", "tpe")]
    assert sorted(x.split()[0] for x in rows) == sorted(["basic", "mse", "exhaustive", "random", "bayesian", "tpe"])
    png = sweep / "compare.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


SAVED = {"onnxrt": ("onnxruntime", "best_model.onnx"), "tensorflow": ("tensorflow", "best_model.tflite"),
         "mxnet": ("mxnet", "best_model-symbol.json")}


@pytest.mark.parametrize("framework", list(SAVED))
def test_all_strategies_run_with_each_framework(tmp_path, framework):
    module, saved = SAVED[framework]
    if __import__("importlib").util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install 'lpot-research[{framework}]')")
    sweep = tmp_path / "sweep"
    r = tune("-m", "strategy=basic,mse,exhaustive,random,bayesian,tpe", f"framework={framework}",
             "exit_policy.timeout=60", "exit_policy.max_trials=3", "accuracy_criterion.tolerance=0.001",
             f"hydra.sweep.dir={sweep}", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in sweep.rglob("summary.json")]
    assert sorted(s["strategy"] for s in summaries) == sorted(["basic", "mse", "exhaustive", "random", "bayesian",
                                                                 "tpe"])
    assert all(s["framework"] == framework and s["trials"] >= 1 and s["best"] for s in summaries)
    run = next(p.parent for p in sweep.rglob("summary.json"))
    assert (run / saved).exists()
    v = subprocess.run([sys.executable, str(ROOT / "scripts" / "verify_saved_model.py"), str(run)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert v.returncode == 0 and "MATCH" in v.stdout, v.stdout + v.stderr


@pytest.mark.parametrize("launcher,plugin,target", [
    ("parallel", "hydra_plugins.hydra_joblib_launcher", "JoblibLauncher"),
    ("slurm", "hydra_plugins.hydra_submitit_launcher", "SlurmLauncher"),
])
def test_launcher_configs_compose(launcher, plugin, target):
    if __import__("importlib").util.find_spec(plugin) is None:
        pytest.skip(f"{plugin} is not installed (pip install 'lpot-research[cluster]')")
    r = tune(f"hydra/launcher={launcher}", "--cfg", "hydra", timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"_target_: {plugin}." in r.stdout and target in r.stdout


@pytest.mark.slow
def test_random_search_has_no_trial_the_cpu_cannot_run_on_either_class(tmp_path):
    """Every option of the default (export) back end's space runs on the CPU class it was built for, and
    symmetric activations are among them on every class (the FX back end, whose FBGEMM kernels need 7-bit
    activations on AVX2, cannot range-reduce them and does not offer them there: test_pytorch_adaptor).
    The two classes' runs go at the same time, one core each."""
    runs = {}
    for isa in ("native", "avx2"):
        env = {**env_without_isa_cap(), "PYTHONPATH": str(ROOT)}
        if isa != "native":
            env["LPOT_CPU_ISA"] = isa
        # 12 random configurations of 6 ops: 72 draws of the ops' options, each config compiled and timed
        runs[isa] = dict(args=[sys.executable, str(ROOT / "tune.py"), "strategy=random", "exit_policy.max_trials=12",
                               "exit_policy.timeout=3600", f"hydra.run.dir={tmp_path / isa}"], env=env)
    for isa, r in run_together(runs, capture_output=True, text=True, cwd=ROOT, timeout=1200).items():
        assert r.returncode == 0, (isa, r.stderr[-3000:])
        s = json.loads((tmp_path / isa / "summary.json").read_text())
        errors = [t.error for t in History.read(tmp_path / isa).trials if t.error]
        assert s["trials"] == 12 and s["failed_trials"] == 0, (isa, errors)
        schemes = {c["activation"]["scheme"] for t in History.read(tmp_path / isa).trials
                   for c in t.config["ops"].values() if c["dtype"] == "int8"}
        assert schemes == {"asym", "sym"}, isa
