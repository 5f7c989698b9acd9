"""What a run reports about itself: where the time went (every cost >= 0, adding up to the wall time with
the untimed rest reported), latency measurements bounded in time and consistent with the ratio beside
them, and progress while basic measures per-op sensitivity."""

import logging
import time

import numpy as np
import pytest

from lpot_research.measure.benchmark import Benchmark, measure
from lpot_research.run.history import SENSITIVITY, History, analysis_key
from lpot_research.run.report import TIMED
from lpot_research.strategies.basic import BasicStrategy
from tests.fakes import FakeAdaptor, indexed_loader
from tests.helpers import run_fake

CALIBRATION_S = 0.02


class CalibratingFake(FakeAdaptor):
    """The fake with a cached calibration shaped like ONNX Runtime's KL: a window search (derived, cached per
    algorithm) that needs the histograms (a pass over the data, cached) inside it: nested computations."""

    def quantize(self, model, config, calib_dataloader, example_inputs):
        algorithms = {c.activation.algorithm for _, c in config.ops if c.quantized and c.activation}
        for algorithm in sorted(algorithms):
            self.calibration.get(("windows", algorithm), lambda: self.calibration.get("histograms", self._pass),
                                 data_pass=False)
        return super().quantize(model, config, calib_dataloader, example_inputs)

    @staticmethod
    def _pass():
        time.sleep(CALIBRATION_S)
        return "histograms"


def test_costs_are_positive_and_add_up_to_the_wall_time(tmp_path):
    """basic on 6 ops with per-sample evaluation: trials stop early, the sensitivity of every op is
    measured, calibration is nested; then every cost is >= 0 and the steps plus `other_s` are the wall
    time. (Before: a nested calibration was timed twice and quantization came out negative.)"""
    n = 400
    adaptor = CalibratingFake(ops=6, per_sample=n, sleep=0.01)
    res = run_fake(tmp_path, adaptor, BasicStrategy(seed=1), eval_loader=indexed_loader(n))
    s = res.summary
    c = s.costs
    assert c.rejected_early > 0 and c.analysis_s > 0
    h = History.read(tmp_path)
    assert [analysis_key(SENSITIVITY, c) for c in h.per_config(SENSITIVITY)] == [
        k for k in h.analysis_seconds if k.startswith(analysis_key(SENSITIVITY, ""))]
    assert all(getattr(c, k) >= 0 for k in (*TIMED, "other_s")), c
    for t in History.read(tmp_path).trials:
        assert all(v >= 0 for v in t.costs.values()), (t.trial, t.costs)
    # the histograms were computed once per process (the windows per algorithm): calibration seconds
    # are that one pass, not the pass counted again inside each window search
    assert adaptor.calibrations == 1
    assert CALIBRATION_S <= c.calibrate_s < 1.5 * CALIBRATION_S + 0.01
    assert sum(getattr(c, k) for k in TIMED) + c.other_s == pytest.approx(s.elapsed_s, abs=0.01)
    assert c.other_s < s.elapsed_s
    report = (tmp_path / "report.md").read_text()
    assert f"per-op analysis {c.analysis_s:.1f} s" in report and f"other {c.other_s:.1f} s" in report


def test_sensitivity_reports_its_progress(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="lpot_research")
    run_fake(tmp_path, FakeAdaptor(ops=5), BasicStrategy(seed=1))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("per-op sensitivity: ")]
    assert lines[0] == "per-op sensitivity: 5 op(s) to quantize one at a time (0 known)"
    assert lines[1].startswith("per-op sensitivity: 1/5 ops, ") and "ETA" in lines[1]
    assert lines[-1].startswith("per-op sensitivity: 5/5 ops, ") and "ETA" not in lines[-1]


def test_latency_measurement_stops_at_its_time_bound():
    """A noisy slow run never reaches the tolerance: max_seconds ends it after min_iterations and says so."""
    rng = np.random.default_rng(0)

    def run():
        time.sleep(0.01 * (1 + rng.random()))

    bench = Benchmark(warmup=0, iterations=1000, min_iterations=3, tolerance=0.001, max_seconds=0.3)
    t0 = time.perf_counter()
    lat = measure(run, bench, run)
    assert lat.bounded and lat.spread > bench.tolerance and 3 <= lat.runs < 1000
    assert 0.3 <= lat.seconds <= time.perf_counter() - t0
    m = lat.as_metrics()
    assert m["latency_bounded"] == 1.0 and m["latency_seconds"] == round(lat.seconds, 3)
    steady = measure(lambda: None, Benchmark(warmup=0, iterations=5, min_iterations=5, max_seconds=10), None)
    assert not steady.bounded and "latency_bounded" not in steady.as_metrics()


def test_bad_time_bound_is_named():
    from lpot_research.core.errors import ConfigError

    with pytest.raises(ConfigError, match="benchmark.max_seconds=0 must be seconds > 0"):
        Benchmark(max_seconds=0)


class NoisyBaseline(FakeAdaptor):
    """The FP32 model's latency is unstable the first `noisy` times it is measured alone."""

    def __init__(self, noisy: int, **kw):
        super().__init__(**kw)
        self.noisy, self.alone = noisy, 0

    def measure_latency(self, model, inputs, bench, reference=None):
        lat = super().measure_latency(model, inputs, bench, reference)
        if reference is None:
            self.alone += 1
            if self.alone <= self.noisy:
                return type(lat)(lat.latency_ms * 3, 0.36, 30)
        return lat


@pytest.mark.parametrize("noisy", [1, 3])
def test_an_unstable_fp32_latency_is_measured_again_then_flagged(tmp_path, caplog, noisy):
    caplog.set_level(logging.INFO, logger="lpot_research")
    adaptor = NoisyBaseline(noisy, ops=4)
    res = run_fake(tmp_path, adaptor, BasicStrategy(seed=1))
    b = res.summary.baseline
    text = caplog.text
    assert "measuring it again" in text
    if noisy == 1:  # the second measurement is stable: it is the one kept
        assert adaptor.alone == 2 and b["latency_spread"] == 0.0 and "the FP32 latency is unstable" not in text
    else:  # three unstable measurements: kept, flagged in the log and beside the number in report.md
        assert adaptor.alone == 3 and b["latency_spread"] == 0.36 and "the FP32 latency is unstable" in text
        assert "FP32 baseline (timed alone at the start +-36%)" in (tmp_path / "report.md").read_text()


def test_the_fp32_latency_beside_a_ratio_comes_from_its_pairs(tmp_path, caplog):
    """The closing table and report.md show, beside the best's ratio, the FP32 time measured in the same
    pairs; the baseline row is labelled as the lone measurement at the start."""
    caplog.set_level(logging.INFO, logger="lpot_research")
    res = run_fake(tmp_path, NoisyBaseline(3, ops=4), BasicStrategy(seed=1))
    best = res.summary.best
    assert best.fp32_latency_ms == 16.0 and best.latency_ratio == pytest.approx(best.latency_ms / 16.0)
    assert res.summary.baseline["latency_ms"] == 48.0  # the noisy lone measurement, kept apart
    row = next(line for line in caplog.text.splitlines() if line.strip().startswith(f"#{best.trial} ")
               and " best " in line)
    assert f"{best.latency_ms:.3f}" in row and "16.000" in row and f"{best.latency_ratio:.2f}x" in row
    report = (tmp_path / "report.md").read_text()
    assert f"| {best.latency_ms:.3f} | 16.000 | {best.latency_ratio:.2f}x" in report
