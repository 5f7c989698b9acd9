"""The objective interface: the weighted multi-objective, a user objective, both from the API and
tune.py; the metric interface from tune.py (built-in F1 and a user metric)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import lpot_research
from lpot_research.core.errors import ConfigError
from lpot_research.measure.objectives import Weighted
from lpot_research.run.history import History
from tests.fakes import FakeAdaptor, FakeModel, FakeScore
from tests.helpers import LOADER

ROOT = Path(__file__).resolve().parents[1]


def test_weighted_score_math():
    w = Weighted({"latency": 1.0, "size": 0.5, "accuracy": 10.0})
    base = {"accuracy": 0.8, "latency_ms": 10.0, "size_bytes": 100.0}
    assert w.value(base, 0.8, base, True) == pytest.approx(1.5)  # FP32 itself: the sum of cost weights
    m = {"latency_ms": 4.0, "size_bytes": 25.0}
    assert w.value(m, 0.78, base, True) == pytest.approx(0.4 + 0.125 + 10 * 0.025)
    assert w.value(m, 0.78, base, False) == pytest.approx(0.4 + 0.125 - 10 * 0.025)  # lower-is-better metric
    assert w.needs() == ("latency_ms", "size_bytes")
    with pytest.raises(ConfigError, match="'speed' is unknown; valid weights: \\['latency', 'size', 'footprint'"):
        Weighted({"speed": 1})
    with pytest.raises(ConfigError, match="all zero"):
        Weighted({"latency": 0})


def test_weighted_objective_picks_the_best_trade_off_among_passing(tmp_path):
    """With a heavy accuracy weight, the passing config that loses least wins even if slower; with
    latency only, the fastest passing config wins."""
    def run(weights, out):
        return lpot_research.tune(FakeModel(None), LOADER, LOADER, framework=FakeAdaptor(penalties=[0.002] * 4),
                                  metric=FakeScore(), objective={"name": "weighted", "weights": weights},
                                  strategy="exhaustive", exit_policy={"timeout": 60, "max_trials": 30},
                                  output_dir=tmp_path / out)
    fast = run({"latency": 1.0}, "fast").summary
    careful = run({"latency": 1.0, "accuracy": 1000.0}, "careful").summary
    assert fast.objective == "weighted" and fast.met_criterion and careful.met_criterion
    passing = [t for t in History.read(tmp_path / "fast").trials if t.passed]
    fastest = min(passing, key=lambda t: t.metrics["latency_ms"])
    assert fast.best.latency_ms == fastest.metrics["latency_ms"]
    assert careful.best.accuracy >= fast.best.accuracy
    assert careful.best.accuracy == max(t.accuracy for t in passing)


def test_user_objective_from_the_api(tmp_path):
    pytest.importorskip("torch", reason="the digits model needs PyTorch")
    sys.path.insert(0, str(ROOT))
    from examples.custom_objective import TailLatency
    from lpot_research.models.digits import DigitsCNN

    b = DigitsCNN().load()
    r = lpot_research.tune(b.model, b.calib_dataloader, b.eval_dataloader, b.metric, objective=TailLatency(runs=5),
                           output_dir=tmp_path, exit_policy={"timeout": 30, "max_trials": 3})
    s = r.summary
    assert s.objective == "tail_latency" and "p90_latency_ms" in s.baseline
    passing = [t for t in History.read(tmp_path).trials if t.passed]
    assert passing and all("p90_latency_ms" in t.metrics for t in passing)  # measured where it decides


# The objectives' and metrics' plumbing from the command line, on the digits model through ONNX Runtime:
# the cheapest real back end to start (no Inductor compilation: a third of a PyTorch run's time)
CHEAP = ["framework=onnxrt"]


def tune_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "tune.py"), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def weighted_score(t, base):
    """conf/objective/weighted.yaml's score of trial `t`, written out: its weights times latency and size
    relative to FP32, plus the relative accuracy loss."""
    from omegaconf import OmegaConf

    w = OmegaConf.load(ROOT / "conf" / "objective" / "weighted.yaml").weights
    assert not w.get("footprint")  # the summary's baseline has no footprint to divide by
    return (w.latency * t.metrics["latency_ms"] / base["latency_ms"] + w.size * t.metrics["size_bytes"] /
            base["size_bytes"] + w.accuracy * (base["accuracy"] - t.accuracy) / abs(base["accuracy"]))


@pytest.mark.parametrize("args,objective,key,value", [
    (["objective=weighted"], "weighted", "weighted_score", weighted_score),
    (["objective._target_=examples.custom_objective.TailLatency"], "tail_latency", "p90_latency_ms",
     lambda t, base: t.metrics["p90_latency_ms"]),
])
def test_objectives_from_tune_py(tmp_path, args, objective, key, value):
    pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed (pip install 'lpot-research[onnxrt]')")
    pytest.importorskip("torch", reason="the digits model is exported from PyTorch")
    r = tune_cli(*CHEAP, *args, f"hydra.run.dir={tmp_path}", "exit_policy.timeout=30", "exit_policy.max_trials=2")
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["objective"] == objective and s["baseline"][key] > 0
    # every passing trial's objective is this objective's value of its own measurements, and the best has the lowest
    passing = [t for t in History.read(tmp_path).trials if t.passed]
    assert passing and all(t.objective > 0 for t in passing)
    assert [t.objective for t in passing] == pytest.approx([value(t, s["baseline"]) for t in passing])
    assert s["best"]["objective"] == min(t.objective for t in passing)


@pytest.mark.parametrize("args,hib", [
    (["metric=f1", "metric.average=macro"], True),
    (["+metric._target_=examples.custom_metric.ErrorRate"], False),
])
def test_metrics_from_tune_py(tmp_path, args, hib):
    pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed (pip install 'lpot-research[onnxrt]')")
    pytest.importorskip("torch", reason="the digits model is exported from PyTorch")
    r = tune_cli(*CHEAP, *args, f"hydra.run.dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["criterion"]["higher_is_better"] is hib and s["met_criterion"]
    assert (0.9 < s["baseline"]["accuracy"] < 1.0) if hib else (0 < s["baseline"]["accuracy"] < 0.1)
