import json
import math

import pytest

from lpot_research import tune
from lpot_research.core.errors import ConfigError, DataError
from lpot_research.run.history import History
from lpot_research.run.summary import Summary
from lpot_research.strategies import Strategy
from lpot_research.strategies.basic import BasicStrategy
from tests.fakes import FakeAdaptor, FakeModel, FakeScore
from tests.helpers import LOADER, history_notes, run_fake, trials


class Scripted(Strategy):
    """Proposes model-wise configs by index, repeats included, and records what it is sent."""

    name = "scripted"

    def __init__(self, order, seed=0):
        super().__init__(seed)
        self.order = order
        self.received = []

    def proposals(self, ctx):
        mw = ctx.space.model_wise_configs()
        for i in self.order:
            self.received.append((yield mw[i].with_note(f"mw{i}")))


def trial_lines(res):
    return trials(res)


def test_repeats_are_answered_from_history_without_a_trial(tmp_path):
    s = Scripted([0, 0, 1, 0, 1, 2])
    res = run_fake(tmp_path, FakeAdaptor(ops=3, penalties=[0.1] * 3), s, config={"exit_policy": {"timeout": 60}})
    assert res.summary.trials == 3
    assert [r.note for r in trial_lines(res)] == ["mw0", "mw1", "mw2"]
    # the repeat got the recorded result back
    assert s.received[1].trial == s.received[0].trial == 1 and s.received[1].accuracy == s.received[0].accuracy
    assert res.summary.stop_reason.startswith("strategy finished")


def test_max_trials_counts_evaluated_configs_only(tmp_path):
    s = Scripted([0, 0, 0, 1, 1, 2, 3])
    res = run_fake(tmp_path, FakeAdaptor(ops=3, penalties=[0.1] * 3), s,
                   config={"exit_policy": {"timeout": 60, "max_trials": 2}})
    assert res.summary.trials == 2 and "max_trials" in res.summary.stop_reason


def test_timeout_is_honoured(tmp_path):
    res = run_fake(tmp_path, FakeAdaptor(ops=4, penalties=[0.1] * 4, sleep=0.2), BasicStrategy(),
                   config={"exit_policy": {"timeout": 0.5, "max_trials": 100}})
    assert "timeout" in res.summary.stop_reason
    assert 1 <= res.summary.trials <= 4


def test_nothing_passes_gives_best_effort_and_pareto_front(tmp_path):
    # fp32 fallback is not allowed and bf16 costs accuracy, so nothing reaches 1% of the FP32 baseline
    res = run_fake(tmp_path, FakeAdaptor(ops=3, penalties=[0.2] * 3, bf16_penalty=0.2), BasicStrategy(),
                   config={"exit_policy": {"timeout": 60},
                           "quantization": {"model_wise": {"activation": {"dtype": ["uint8", "bf16"]}}}})
    s = res.summary
    assert not s.met_criterion and s.best is not None
    trials = trial_lines(res)
    assert s.best.accuracy == max(t.accuracy for t in trials if t.status == "ok")
    front = s.pareto_front
    assert front and all(p.accuracy is not None for p in front)
    # no point of the front is dominated by any trial
    for p in front:
        assert not any(t.objective is not None and t.accuracy > p.accuracy and t.objective <= p.objective
                       for t in trials)
    # failing trials are measured only for the report: the most accurate ones (the best effort among them)
    assert 1 <= sum(t.objective is not None for t in trials) <= 3
    assert (res.output_dir / "best_model.txt").exists() and (res.output_dir / "summary.json").exists()


def test_summary_fields(tmp_path):
    res = run_fake(tmp_path, FakeAdaptor(ops=3))
    s = json.loads((tmp_path / "summary.json").read_text())
    for key in ("strategy", "framework", "model", "baseline", "best", "trials", "met_criterion", "stop_reason",
                "elapsed_s"):
        assert key in s
    assert set(s["baseline"]) >= {"accuracy", "latency_ms", "size_bytes"}
    assert set(s["best"]) >= {"trial", "accuracy", "latency_ms", "size_bytes", "fallback_ops"}
    assert s["framework"] == "fake" and s["strategy"] == "basic"
    assert s["best"]["latency_ratio"] == pytest.approx(s["best"]["latency_ms"] / s["baseline"]["latency_ms"])
    assert (tmp_path / "best_config.yaml").read_text().count("config_id") == 1
    assert res.summary.to_dict() == s and Summary.from_dict(s) == res.summary
    # a summary.json of the previous release (no paired FP32 time, analysis, other or workers costs) reads
    old = {**s, "best": {k: v for k, v in s["best"].items() if k != "fp32_latency_ms"},
           "costs": {k: v for k, v in s["costs"].items() if k not in ("analysis_s", "other_s", "workers")}}
    back = Summary.from_dict(old)
    assert back.best.fp32_latency_ms is None and back.costs.other_s is None and back.costs.workers == 1
    with pytest.raises(ValueError, match=r"Costs lacks \['calibrate_s'\]"):
        Summary.from_dict({**s, "costs": {k: v for k, v in s["costs"].items() if k != "calibrate_s"}})


def test_failed_trial_is_recorded_and_tuning_goes_on(tmp_path):
    res = run_fake(tmp_path, FakeAdaptor(ops=3, fail_ops=["op1"]))
    trials = trial_lines(res)
    failed = [t for t in trials if t.status == "failed"]
    assert failed and all("fake quantization failure at op1" in t.error for t in failed)
    assert res.summary.met_criterion


def test_nan_metric_on_a_trial_fails_that_trial(tmp_path):
    adaptor = FakeAdaptor(ops=2, penalties=[0.001, 0.001])

    def eval_func(model):
        return float("nan") if model.config is not None and model.config.note.endswith("a:asym/minmax") else 1.0

    res = tune(FakeModel(None), LOADER, eval_func=eval_func, framework=adaptor, output_dir=tmp_path,
               example_inputs=[0])
    trials = trial_lines(res)
    assert trials[0].status == "failed" and "nan" in trials[0].error.lower()
    assert res.summary.met_criterion and res.summary.best.trial == 2


def test_nan_baseline_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="FP32 model returned nan"):
        tune(FakeModel(None), LOADER, eval_func=lambda m: math.nan, framework=FakeAdaptor(), output_dir=tmp_path,
             example_inputs=[0])


def test_unknown_names_list_the_valid_choices(tmp_path):
    with pytest.raises(ConfigError, match="unknown strategy 'nope'; valid strategies: basic"):
        run_fake(tmp_path, strategy="nope")
    with pytest.raises(ConfigError, match="unknown framework 'caffe'.*pytorch"):
        tune(FakeModel(None), LOADER, LOADER, framework="caffe", output_dir=tmp_path)
    with pytest.raises(ConfigError, match="unknown objective 'speed'.*performance, modelsize, footprint"):
        run_fake(tmp_path, objective="speed")
    with pytest.raises(ConfigError, match="unknown key quantisation; valid keys: quantization, accuracy_criterion"):
        run_fake(tmp_path, config={"quantisation": {}})


def test_objective_selects_the_best_among_passing(tmp_path):
    # with modelsize, the smallest passing config wins; the fake's size follows its latency
    res = run_fake(tmp_path, FakeAdaptor(ops=3, penalties=[0.001] * 3), BasicStrategy(), objective="modelsize",
                   config={"exit_policy": {"timeout": 60}})
    assert res.summary.objective == "modelsize"
    assert res.summary.best.objective == res.summary.best.size_bytes


def test_resume_continues_without_reevaluating(tmp_path):
    landscape = dict(ops=4, penalties=[0.02, 0.02, 0.03, 0.04])
    full = run_fake(tmp_path / "full", FakeAdaptor(**landscape), BasicStrategy(seed=3))
    first = FakeAdaptor(**landscape)
    part = run_fake(tmp_path / "run", first, BasicStrategy(seed=3), config={"exit_policy": {"max_trials": 5}})
    assert part.summary.trials == 5 and "max_trials" in part.summary.stop_reason
    done_before = {t.config_id for t in trial_lines(part)}
    second = FakeAdaptor(**landscape)
    resumed = run_fake(tmp_path / "run", second, BasicStrategy(seed=3))
    # the resumed process evaluated only new configs (the best may be rebuilt once, at the end, to save it)
    evaluated_again = [c for c in second.quantize_calls[:-1] if c in done_before]
    assert not evaluated_again
    trials = trial_lines(resumed)
    assert [t.trial for t in trials] == list(range(1, len(trials) + 1))
    assert len({t.config_id for t in trials}) == len(trials)
    assert history_notes(resumed) == history_notes(full)
    assert resumed.summary.best.config_id == full.summary.best.config_id


def test_resume_refuses_a_different_run(tmp_path):
    run_fake(tmp_path, FakeAdaptor(ops=3), BasicStrategy(seed=1))
    with pytest.raises(ConfigError, match="different run"):
        run_fake(tmp_path, FakeAdaptor(ops=3), BasicStrategy(seed=2))


def test_torn_last_history_line_is_dropped(tmp_path):
    run_fake(tmp_path, FakeAdaptor(ops=3), BasicStrategy(), config={"exit_policy": {"max_trials": 2}})
    path = tmp_path / "history.jsonl"
    with open(path, "a") as f:
        f.write('{"kind": "trial", "trial": 3, "conf')  # a write cut by SIGKILL
    res = run_fake(tmp_path, FakeAdaptor(ops=3), BasicStrategy(), config={"exit_policy": {"max_trials": 4}})
    assert [t.trial for t in trial_lines(res)] == [1, 2, 3, 4]


def test_empty_dataloader_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="calibration dataloader yielded no batch"):
        tune(FakeModel(None), [], LOADER, framework=FakeAdaptor(), output_dir=tmp_path)
    with pytest.raises(ConfigError, match="eval_func"):
        tune(FakeModel(None), LOADER, framework=FakeAdaptor(), output_dir=tmp_path)


class Raising(Strategy):
    name = "raising"

    def proposals(self, ctx):
        yield ctx.space.model_wise_configs()[0].with_note("one")
        raise RuntimeError("bug in a strategy")


def test_a_strategy_error_still_ends_with_a_summary(tmp_path):
    res = run_fake(tmp_path, FakeAdaptor(ops=2, penalties=[0.1, 0.1]), Raising(),
                   config={"exit_policy": {"timeout": 60}})
    assert "strategy error: RuntimeError: bug in a strategy" in res.summary.stop_reason
    assert res.summary.trials == 1 and (tmp_path / "summary.json").exists()


def test_mse_survives_a_base_config_that_does_not_quantize(tmp_path):
    res = run_fake(tmp_path, FakeAdaptor(ops=3, fail_ops=["op0"]), "mse")
    assert res.summary.met_criterion and "op0" in res.summary.best.fallback_ops


class Counting(Strategy):
    name = "counting"

    def __init__(self, seed=0):
        super().__init__(seed)
        self.asked = 0

    def proposals(self, ctx):
        for cfg in ctx.space.model_wise_configs():
            self.asked += 1
            yield cfg


def test_no_proposal_is_requested_once_the_budget_is_spent(tmp_path):
    s = Counting()
    res = run_fake(tmp_path, FakeAdaptor(ops=3, penalties=[0.1] * 3), s,
                   config={"exit_policy": {"timeout": 60, "max_trials": 2}})
    assert res.summary.trials == 2 and s.asked == 2


def test_sampling_sizes_beyond_the_data_are_clamped(tmp_path, caplog):
    res = run_fake(tmp_path, FakeAdaptor(ops=2, penalties=[0.1, 0.1]), Counting(),
                   config={"quantization": {"calibration": {"sampling_size": [50, 200, 500]}},
                           "exit_policy": {"timeout": 60}})
    assert res.space.sampling_sizes == (50, 100)
    assert "holds 100 sample(s)" in caplog.text


def test_dynamic_approach_has_one_sampling_size(tmp_path):
    res = run_fake(tmp_path, FakeAdaptor(ops=2, penalties=[0.1, 0.1]), Counting(),
                   config={"quantization": {"approach": "post_training_dynamic_quant",
                                            "calibration": {"sampling_size": [10, 20]}},
                           "exit_policy": {"timeout": 60}})
    assert res.space.sampling_sizes == (10,)


def test_one_shot_iterators_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="one-shot iterator"):
        tune(FakeModel(None), iter(LOADER), LOADER, framework=FakeAdaptor(), output_dir=tmp_path)


class Loss(FakeScore):
    """A lower-is-better metric: 1 - the fake accuracy, per sample."""

    higher_is_better = False

    def sample_scores(self, predictions, labels):
        return 1.0 - super().sample_scores(predictions, labels)


def test_criterion_direction_follows_a_lower_is_better_metric(tmp_path):
    res = tune(FakeModel(None), LOADER, LOADER, Loss(), framework=FakeAdaptor(ops=3), output_dir=tmp_path,
               config={"accuracy_criterion": {"kind": "absolute", "tolerance": 0.02}})
    s = res.summary
    assert s.criterion.higher_is_better is False
    assert s.criterion.threshold == pytest.approx(0.02)
    assert s.met_criterion and s.best.accuracy <= 0.02


def test_score_ranks_every_passing_config_above_every_failing_one():
    from lpot_research.quant.criterion import AccuracyCriterion
    from lpot_research.strategies.base import Result, StrategyContext

    ctx = StrategyContext(space=None, criterion=AccuracyCriterion(), baseline_accuracy=0.9, baseline_objective=2.0)
    slow_pass = ctx.score(Result(None, True, 0.9, 200.0, True, 1))  # 100x slower than FP32, but passing
    near_miss = ctx.score(Result(None, True, 0.89, 0.1, False, 2))
    far_miss = ctx.score(Result(None, True, 0.5, 0.1, False, 3))
    fast_pass = ctx.score(Result(None, True, 0.9, 1.0, True, 4))
    assert fast_pass > slow_pass > near_miss > far_miss
    assert ctx.score(Result(None, False, None, None, False, 5)) is None


class SlowInt8(FakeAdaptor):
    """INT8 kernels slower than FP32 (as for a tiny model): the run must say so, not call it optimized."""

    def latency_ms(self, model, inputs, warmup, iterations):
        if model.config is None:
            return 4.0
        return 4.0 + sum(c.quantized for _, c in model.config.ops)


def test_a_slower_tuned_model_is_reported_plainly(tmp_path, caplog):
    caplog.set_level("INFO")
    res = run_fake(tmp_path, SlowInt8(ops=3, penalties=[0.001] * 3))
    assert res.summary.met_criterion and res.summary.faster_than_fp32 is False
    assert res.summary.best.latency_ratio > 1
    assert "SLOWER than FP32" in caplog.text and "faster than FP32" not in caplog.text


def test_every_run_writes_a_report_with_the_summary_numbers(tmp_path):
    res = run_fake(tmp_path, FakeAdaptor(ops=4), BasicStrategy())
    s = res.summary
    report = (tmp_path / "report.md").read_text()
    spread = s.baseline["latency_spread"]
    assert f"| FP32 baseline (timed alone at the start +-{spread:.0%}) | {s.baseline['accuracy']:.4f} |" in report
    assert f"| best (trial {s.best.trial}) | {s.best.accuracy:.4f} |" in report
    assert f"{s.trials} trial(s), {s.failed_trials} failed" in report and s.stop_reason in report
    rows = [x for x in report.splitlines() if x.startswith("| ") and x.split("|")[1].strip().isdigit()]
    assert [int(r.split("|")[1]) for r in rows] == list(range(1, s.trials + 1))
    assert "fallback ops: " + ", ".join(f"`{n}` (bf16)" for n in s.best.fallback_ops) in report
    assert (tmp_path / "tuning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_passing_trials_the_measurement_cannot_tell_from_the_best_are_named(tmp_path):
    # every INT8 op costs 0.1%: most configs pass; the fake's latency is the sum of per-op costs with no
    # spread, so exactly the passing configs with the best's dtype mix are as fast as the best
    res = run_fake(tmp_path, FakeAdaptor(ops=4, penalties=[0.001] * 4), "random",
                   {"exit_policy": {"timeout": 3600, "max_trials": 20}})
    s, ts = res.summary, trials(res)
    best = next(t for t in ts if t.trial == s.best.trial)
    same = [t.trial for t in ts if t.passed and t.trial != best.trial
            and t.metrics["latency_ms"] == best.metrics["latency_ms"]]
    slower = [t for t in ts if t.passed and t.metrics["latency_ms"] > best.metrics["latency_ms"]]
    assert same and slower  # both kinds exist, so the list below is a selection
    assert s.best.within_noise == same
    assert "Within measurement noise of the best's latency: trial(s) " + ", ".join(map(str, same)) in \
        (tmp_path / "report.md").read_text()


# ---------------------------------------------------------------------------------------------- the speed limit
def test_the_all_int8_latency_stands_beside_a_best_with_fallbacks(tmp_path):
    """basic's most accurate model-wise trial (all INT8) is measured at the end: the limit the fallback ops
    give latency back from, in summary.json, report.md and the closing lines."""
    res = run_fake(tmp_path)
    s, ts = res.summary, trials(tmp_path)
    best = ts[s.best.trial - 1]
    model_wise = [t for t in ts if t.note.startswith("model-wise")]
    top = max(model_wise, key=lambda t: t.accuracy)
    assert s.best.fallback_ops and s.all_int8["trial"] == top.trial
    assert s.all_int8["latency_ratio"] == pytest.approx(top.metrics["latency_ratio"])  # measured at the end
    assert s.all_int8["latency_ratio"] < s.best.latency_ratio
    assert s.all_int8["fallbacks"] == len(s.best.fallback_ops)
    assert s.all_int8["fallback_cost"] == pytest.approx(best.metrics["latency_ratio"] / top.metrics["latency_ratio"]
                                                        - 1, abs=1e-4)
    assert json.loads((tmp_path / "summary.json").read_text())["all_int8"] == s.all_int8
    assert f"| all-INT8 (trial {top.trial}; the {len(s.best.fallback_ops)} fallback(s) cost" in \
        (tmp_path / "report.md").read_text()


def test_a_run_that_never_tried_all_int8_measures_it_once(tmp_path):
    """A strategy that never proposed a model-wise configuration: the first one is quantized and timed
    apart, once, and a resume reads it from the history."""
    cfg = {"exit_policy": {"timeout": 0, "max_trials": 40}, "random_seed": 3}
    res = run_fake(tmp_path, FakeAdaptor(ops=3), "random", cfg)
    ts = trials(tmp_path)
    assert res.summary.met_criterion and not any(t.note.startswith("model-wise") for t in ts)
    a = res.summary.all_int8
    assert a["trial"] is None and a["latency_ratio"] == pytest.approx(3 / 12)  # 3 INT8 ops of cost 1, FP32 4 each
    h = History.read(tmp_path)
    assert h.analysis_records["all_int8"] == 1
    assert run_fake(tmp_path, FakeAdaptor(ops=3), "random", cfg).summary.all_int8 == a
    assert History.read(tmp_path).analysis_records["all_int8"] == 1, "measured once per run"


def test_a_best_that_is_all_int8_has_nothing_given_back(tmp_path):
    s = run_fake(tmp_path, FakeAdaptor(ops=3, penalties=[0.001] * 3)).summary
    assert not s.best.fallback_ops and s.all_int8["fallbacks"] == 0 and s.all_int8["fallback_cost"] == 0
    assert "all-INT8" not in (tmp_path / "report.md").read_text()
