"""The basic strategy's stage order, on a fake framework whose accuracy landscape is known.

Landscape (FakeAdaptor defaults, 4 ops): an INT8 op i costs 0.01*(i+1) accuracy with minmax calibration
and half that with kl; a bf16 op costs 0.001. FP32 accuracy is 1.0 and the criterion is 1% relative. The
fake model's output is its accuracy, so an op's impact (the share of the output error against FP32 its
fallback removes) follows its penalty.
"""

import dataclasses

import pytest

from lpot_research.core.errors import ConfigError
from lpot_research.run.history import OP_COSTS, SENSITIVITY, History, analysis_key
from lpot_research.strategies.basic import BasicStrategy
from tests.fakes import FakeAdaptor
from tests.helpers import history_notes, run_fake, trials


def test_stage_order_and_stop_when_met(tmp_path):
    adaptor = FakeAdaptor(ops=4)
    res = run_fake(tmp_path, adaptor, BasicStrategy(seed=1))
    notes = history_notes(res)
    # stage 1: the four model-wise configs (weight sym/per_channel x act asym|sym x minmax|kl)
    assert all(n.startswith("model-wise") for n in notes[:4]) and len(notes[:4]) == 4
    # stage 2 costs no trial: each op quantized alone as in the best model-wise config (kl, accuracy 0.95)
    # runs on a probe batch; how far that moves the output from FP32 is kept in the history
    [impact] = History.read(tmp_path).per_config(SENSITIVITY).values()
    assert sorted(impact, key=lambda n: -impact[n]) == ["op3", "op2", "op1", "op0"]
    # stage 3 falls back op3, op2, op1 (0.969, 0.983, 0.992 >= 0.99): the first pass
    assert notes[4:7] == [f"stage 3: +op{i} -> bf16 ({k}/4 ops)" for k, i in ((1, 3), (2, 2), (3, 1))]
    # stage 4 quantizes each fallback again, least sensitive first: op1's is stage 3's failing second
    # config (answered from the history, no trial), op2's and op3's fail (0.976, 0.971): all three are needed
    assert notes[7:] == ["stage 4: op2 back to INT8 (2/3)", "stage 4: op3 back to INT8 (3/3)"]
    s = res.summary
    assert s.met_criterion and s.trials == 9
    assert sorted(s.best.fallback_ops) == ["op1", "op2", "op3"]
    assert set(s.best.fallback_dtypes.values()) == {"bf16"}
    assert s.best.accuracy == 0.992
    assert s.stop_reason == ("strategy finished: cumulative bf16 fallback meets the criterion; refinement quantized 0 "
                             "of its 3 fallback op(s) again (2 trial(s))")
    # the probe quantizations happen outside trials: 4 model-wise + 4 ops alone + 3 stage-3 and 2 stage-4
    # trials, and the most accurate model-wise config again, timed at the end as the all-INT8 limit
    assert len(adaptor.quantize_calls) == 4 + 4 + 3 + 2 + 1
    assert adaptor.quantize_calls[-1] == s.all_int8["config_id"]


def test_a_resumed_run_reuses_the_recorded_impact(tmp_path):
    run_fake(tmp_path, FakeAdaptor(ops=4), BasicStrategy(seed=1), config={"exit_policy": {"max_trials": 5}})
    again = FakeAdaptor(ops=4)
    res = run_fake(tmp_path, again, BasicStrategy(seed=1))
    assert res.summary.trials == 9
    # only the new stage-3 and stage-4 trials quantize (the best, stage 3's last, is kept in memory): no
    # probe ran again
    assert len(again.quantize_calls) == 2 + 2
    h = History.read(tmp_path)
    [base] = h.per_config(SENSITIVITY)  # one base configuration, its impact written once
    assert h.analysis_records[analysis_key(SENSITIVITY, base)] == 1


class TrialRanked(BasicStrategy):
    """basic as the seed runs it: stage 2 costs one trial per op (a tuner that measures no impact)."""

    def rank_ops(self, ctx, base, dtype, ops):
        return (yield from super().rank_ops(dataclasses.replace(ctx, sensitivity=None), base, dtype, ops))


def test_without_measured_impact_stage2_runs_a_trial_per_op(tmp_path):
    res = run_fake(tmp_path, FakeAdaptor(ops=4), TrialRanked())
    notes = history_notes(res)
    assert notes[4:8] == [f"stage 2: op{i} -> bf16 alone" for i in (3, 2, 1, 0)]
    # none passed alone: the first 2 ops together (0.963) fail, then stage 3 in stage 2's order, where
    # "+op3" repeats a stage-2 config and costs no trial; +op1 reaches 0.992
    assert notes[8:11] == ["stage 2b: first 2 ops -> bf16", "stage 3: +op2 -> bf16 (2/4 ops)",
                           "stage 3: +op1 -> bf16 (3/4 ops)"]
    assert res.summary.met_criterion and res.summary.trials == 11 + 2  # and two stage-4 trials


BLOCK = {"ops": 8, "penalties": [0.01] * 4 + [0.0005] * 4}  # the first four of eight ops carry the error


def test_block_stage_finds_the_input_side_prefix(tmp_path):
    # no single op's fallback passes (best: 0.984); first 2 -> bf16 gives 0.987, first 3 gives 0.991:
    # with timeout 0 the first pass ends the run, so k grows one at a time from 2
    res = run_fake(tmp_path, FakeAdaptor(**BLOCK), TrialRanked())
    notes = history_notes(res)
    assert notes[12:14] == ["stage 2b: first 2 ops -> bf16", "stage 2b: first 3 ops -> bf16"]
    # stage 4 refines the block: each of its ops is needed (op2's try is the failing first-2 block, answered)
    assert notes[14:] == ["stage 4: op0 back to INT8 (1/3)", "stage 4: op1 back to INT8 (2/3)"]
    s = res.summary
    assert s.met_criterion and s.trials == 4 + 8 + 2 + 2
    assert sorted(s.best.fallback_ops) == ["op0", "op1", "op2"]


def test_block_stage_bisects_with_a_time_budget(tmp_path):
    # timeout > 0: first 4 passes (0.995), then 2 fails and 3 passes; stage 3 follows in case it finds
    # a config with fewer fallbacks (it does not here: its first pass needs three bf16 ops too)
    res = run_fake(tmp_path, FakeAdaptor(**BLOCK), TrialRanked(), config={"exit_policy": {"timeout": 3600}})
    notes = history_notes(res)
    assert notes[12:15] == [f"stage 2b: first {k} ops -> bf16" for k in (4, 2, 3)]
    assert notes[15:17] and all(n.startswith("stage 3") for n in notes[15:17])
    assert notes[17:] and all(n.startswith("stage 4") for n in notes[17:])
    assert sorted(res.summary.best.fallback_ops) == ["op0", "op1", "op2"]


def test_measured_sensitivity_finds_the_spread_error_without_a_block_stage(tmp_path):
    # each of the first four ops carries the same error: quantized alone, each moves the output most, so
    # they rank first and stage 3 takes them
    res = run_fake(tmp_path, FakeAdaptor(**BLOCK), BasicStrategy(refine=0))
    notes = history_notes(res)
    assert all(n.startswith("stage 3") for n in notes[4:]) and len(notes) == 4 + 3
    fallback = res.summary.best.fallback_ops
    assert len(fallback) == 3 and set(fallback) < {"op0", "op1", "op2", "op3"}  # ties go bottom-up


def test_stage3_falls_back_in_impact_order(tmp_path):
    # op0 is the most sensitive op although it is the first (stage 3 would otherwise start bottom-up)
    res = run_fake(tmp_path, FakeAdaptor(ops=4, penalties=[0.05, 0.001, 0.001, 0.001]), BasicStrategy())
    stage3 = [n for n in history_notes(res) if n.startswith("stage 3")]
    assert stage3 == ["stage 3: +op0 -> bf16 (1/4 ops)"]
    assert res.summary.met_criterion and res.summary.best.fallback_ops == ["op0"]


def test_fp32_after_bf16_is_not_enough(tmp_path):
    # bf16 costs too much accuracy for any bf16 fallback to pass: the fp32 stages follow
    res = run_fake(tmp_path, FakeAdaptor(ops=3, bf16_penalty=0.02), BasicStrategy())
    notes = history_notes(res)
    first_fp32 = next(i for i, n in enumerate(notes) if "fp32" in n)
    assert all("fp32" not in n for n in notes[:first_fp32])
    assert any(n.startswith("stage 3") and "bf16" in n for n in notes[:first_fp32])
    assert notes[first_fp32].startswith("stage 3: +op2 -> fp32")
    assert res.summary.met_criterion
    assert set(res.summary.best.fallback_dtypes.values()) == {"fp32"}


def test_passing_model_wise_config_ends_after_stage1(tmp_path):
    res = run_fake(tmp_path, FakeAdaptor(ops=3, penalties=[0.001] * 3), BasicStrategy(),
                   config={"exit_policy": {"timeout": 3600}})
    notes = history_notes(res)
    assert len(notes) == 4 and all(n.startswith("model-wise") for n in notes)
    assert res.summary.met_criterion
    assert res.summary.stop_reason == ("strategy finished: the best model-wise configuration meets the "
                                          "criterion; fallback cannot improve on it")


@pytest.mark.parametrize("refine", [0, 8])
def test_first_pass_stops_with_timeout_zero(tmp_path, refine):
    res = run_fake(tmp_path, FakeAdaptor(ops=3, penalties=[0.001] * 3), BasicStrategy(refine=refine))
    assert res.summary.trials == 1 and res.summary.met_criterion
    assert res.summary.stop_reason == ("met the criterion (timeout=0: stop at the first passing config)" if not refine
                                       else "strategy finished: the best model-wise configuration meets the "
                                       "criterion; fallback cannot improve on it")


def test_failing_op_is_routed_around(tmp_path):
    # every config with op0 in INT8 fails to quantize: stage 1 fails entirely; op0 alone does not build
    # either, so it ranks first (infinitely sensitive) and falls back first
    res = run_fake(tmp_path, FakeAdaptor(ops=3, fail_ops=["op0"]), BasicStrategy())
    s = res.summary
    # the model-wise four and stage 4's try of op0 in INT8 again fail to build
    assert s.failed_trials == 4 + 1 and s.met_criterion
    assert history_notes(res)[4] == "stage 3: +op0 -> bf16 (1/3 ops)"
    assert history_notes(res)[-1] == "stage 4: op0 back to INT8 (3/3)"
    assert "op0" in s.best.fallback_ops


PAIR = {"ops": 4, "penalties": [0.001, 0.001, 0.001, 0.006], "pair_penalties": [("op0", "op1", 0.012)]}


def test_refinement_drops_the_fallbacks_the_passing_config_does_not_need(tmp_path):
    """op0 and op1 lose 1.2% together and nothing alone: sensitivity ranks op3 first, stage 3 needs three
    fallbacks (op3, op2, then op1, which breaks the pair) and stage 4 finds that op1's alone suffices."""
    res = run_fake(tmp_path / "refined", FakeAdaptor(**PAIR), BasicStrategy())
    notes = history_notes(res)
    assert notes[4:] == ["stage 3: +op3 -> bf16 (1/4 ops)", "stage 3: +op2 -> bf16 (2/4 ops)",
                         "stage 3: +op1 -> bf16 (3/4 ops)", "stage 4: op2 back to INT8 (2/3)",
                         "stage 4: op3 back to INT8 (3/3)"]
    s = res.summary
    assert s.met_criterion and s.best.fallback_ops == ["op1"] and s.best.trial == 9
    assert s.all_int8["fallbacks"] == 1
    seed_rule = run_fake(tmp_path / "first", FakeAdaptor(**PAIR), BasicStrategy(refine=0)).summary
    assert sorted(seed_rule.best.fallback_ops) == ["op1", "op2", "op3"] and seed_rule.trials == 7
    assert s.best.latency_ratio < seed_rule.best.latency_ratio  # each fallback given back is speed


def test_refinement_is_bounded_when_the_first_pass_ends_the_run_and_not_with_a_time_budget(tmp_path):
    one = run_fake(tmp_path / "one", FakeAdaptor(**PAIR), BasicStrategy(refine=1)).summary
    assert one.trials == 7 + 1 and sorted(one.best.fallback_ops) == ["op1", "op3"]
    assert one.stop_reason.endswith("(1 trial(s), bounded by strategy.refine=1)")
    budget = run_fake(tmp_path / "budget", FakeAdaptor(**PAIR), BasicStrategy(refine=1),
                      config={"exit_policy": {"timeout": 3600}}).summary
    assert budget.best.fallback_ops == ["op1"] and budget.stop_reason.endswith("(2 trial(s))")


def test_a_bad_refine_value_is_one_clear_error():
    with pytest.raises(ConfigError, match=r"strategy.refine=-1 must be an int >= 0"):
        BasicStrategy(refine=-1)


def test_the_speed_step_lets_the_ops_slower_in_int8_fall_back_and_the_faster_model_wins(tmp_path):
    """op0 takes 6 ms in INT8 against 4 in FP32 (as a first conv of one input channel does on ONNX
    Runtime): the first model-wise config passes, the speed step lets op0 fall back, and it is faster."""
    slow = {"ops": 4, "penalties": [0.001] * 4, "int8_ms": {"op0": 6.0}}
    res = run_fake(tmp_path / "speed", FakeAdaptor(**slow), BasicStrategy())
    s = res.summary
    assert history_notes(res)[1:] == ["stage 4: the 1 op(s) slower in INT8 than FP32 fall back"]
    assert s.best.trial == 2 and s.best.fallback_dtypes == {"op0": "fp32"}
    assert s.best.latency_ms == 4 + 3 * 1.0 and s.all_int8["latency_ms"] == 6 + 3 * 1.0
    assert s.op_costs["ops"]["op0"] == {"fp32_ms": 4.0, "int8_ms": 6.0}
    assert s.stop_reason.endswith("the speed step let the 1 op(s) slower in INT8 fall back to FP32 (it passes, "
                                  "trial 2)")
    # not when latency is not the objective, nor with the seed's rule
    size = run_fake(tmp_path / "size", FakeAdaptor(**slow), BasicStrategy(), objective="modelsize")
    assert size.summary.trials == 1
    seed = run_fake(tmp_path / "seed", FakeAdaptor(**slow), BasicStrategy(refine=0))
    assert seed.summary.trials == 1 and seed.summary.best.latency_ms == 9.0
    # nor when the profile promises under 5% (0.2 ms of 7.2): no latency measurement could show it
    small = run_fake(tmp_path / "small", FakeAdaptor(**{**slow, "int8_ms": {"op0": 4.2}}), BasicStrategy()).summary
    assert small.trials == 1 and small.stop_reason.endswith(
        "no speed step: the 1 op(s) slower in INT8 cost 0.200 ms, under 5% of the all-INT8 model's 7.200 ms")


def test_with_profiled_costs_refinement_tries_the_costliest_fallback_first_and_not_one_no_faster_in_int8(tmp_path):
    """PAIR's stage 3 ends with op3, op2, op1 falling back. op2 is no faster in INT8 (4 ms, as FP32) and is
    not tried again; op3 saves 3.5 ms in INT8, op1 3: op3 is tried first and kept, op1 breaks the pair."""
    res = run_fake(tmp_path, FakeAdaptor(**PAIR, int8_ms={"op2": 4.0, "op3": 0.5}), BasicStrategy())
    notes = history_notes(res)
    assert notes[4:] == ["stage 3: +op3 -> bf16 (1/4 ops)", "stage 3: +op2 -> bf16 (2/4 ops)",
                         "stage 3: +op1 -> bf16 (3/4 ops)", "stage 4: op3 back to INT8 (1/2)",
                         "stage 4: op1 back to INT8 (2/2)"]
    s = res.summary
    assert sorted(s.best.fallback_ops) == ["op1", "op2"]
    assert s.stop_reason.endswith("refinement quantized 1 of its 2 fallback op(s) again (2 trial(s)); 1 fallback "
                                  "op(s) no faster in INT8 stay fallbacks")


def test_when_all_slower_ops_falling_back_fails_the_speed_step_tries_the_slowest_that_make_most_of_it(tmp_path):
    """Four of five ops slower in INT8 (op0 by 5 ms, op1 by 3, op2 and op3 by 0.5 each); op3 in FP32 loses
    2% (fallback does not always help accuracy). All four fail; op0 and op1 (8 of the 9 ms, >= 80%) pass."""
    fake = FakeAdaptor(ops=5, penalties=[0.001] * 5, int8_ms={"op0": 9.0, "op1": 7.0, "op2": 4.5, "op3": 4.5},
                       fp32_penalties={"op3": 0.02})
    res = run_fake(tmp_path, fake, BasicStrategy())
    assert history_notes(res)[1:] == ["stage 4: the 4 op(s) slower in INT8 than FP32 fall back",
                                      "stage 4: the slowest 2 op(s) slower in INT8 than FP32 (80% of their "
                                      "slowdown) fall back"]
    s = res.summary
    assert s.best.trial == 3 and sorted(s.best.fallback_ops) == ["op0", "op1"]
    assert s.stop_reason.endswith("(it does not pass, trial 2); the speed step let the slowest 2 op(s) slower in "
                                  "INT8 (80% of their slowdown) fall back to FP32 (it passes, trial 3)")


def test_the_speed_step_proposes_the_same_on_two_workers_and_after_a_resume(tmp_path):
    """The strategy contract for the profiled path: the per-op costs are measured once in the tuning
    process and kept in the history, so workers and a resumed run see the same numbers."""
    slow = {"ops": 4, "penalties": [0.001, 0.001, 0.001, 0.02], "int8_ms": {"op0": 6.0, "op2": 1.5}}
    serial = run_fake(tmp_path / "serial", FakeAdaptor(**slow), BasicStrategy())
    notes = history_notes(serial)
    assert "stage 4: the 1 op(s) slower in INT8 than FP32 fall back" in notes
    par = run_fake(tmp_path / "par", FakeAdaptor(**slow), BasicStrategy(), config={"parallel": {"workers": 2}})
    assert [t.config_id for t in trials(par)] == [t.config_id for t in trials(serial)]
    assert par.summary.best.config_id == serial.summary.best.config_id
    run_fake(tmp_path / "run", FakeAdaptor(**slow), BasicStrategy(), config={"exit_policy": {"max_trials": 5}})
    again = FakeAdaptor(**slow)
    resumed = run_fake(tmp_path / "run", again, BasicStrategy())
    assert [t.config_id for t in trials(resumed)] == [t.config_id for t in trials(serial)]
    assert History.read(tmp_path / "run").analysis_records[OP_COSTS] == 1


RECIPES = {"quantization": {"recipes": {"smooth_quant": [0.5], "bias_correction": True}}}


def test_a_recipe_that_meets_the_criterion_keeps_every_op_int8(tmp_path):
    # all-INT8 with kl scores 0.95; SmoothQuant at 0.5 removes 90% of that loss: 0.995 passes
    adaptor = FakeAdaptor(ops=4, recipe_gains={"smooth_quant=0.5": 0.9, "bias_correction": 0.2})
    res = run_fake(tmp_path, adaptor, BasicStrategy(seed=1), RECIPES)
    notes = history_notes(res)
    assert all(n.startswith("model-wise") for n in notes[:4])
    assert notes[4:] == ["stage 1b: smooth_quant 0.5"]  # the batch ends at its first pass
    s = res.summary
    assert s.met_criterion and s.best.fallback_ops == [] and s.best.recipes == {"smooth_quant": 0.5}
    assert s.best.accuracy == 0.995
    assert "with smooth_quant 0.5 meets the criterion" in s.stop_reason


def test_the_best_recipe_becomes_the_base_of_the_fallback_stages(tmp_path):
    # no recipe passes alone (SmoothQuant 0.5: 0.96, 0.8: 0.97; bias correction 0.96); SmoothQuant at its best
    # alpha, 0.8, with bias correction removes 60% of the loss (0.98): the fallback stages start from that
    # config, and two fallbacks (op3, op2: 0.987, 0.992) pass where the plain model-wise config needs three
    gains = {"smooth_quant=0.5": 0.2, "smooth_quant=0.8": 0.4, "bias_correction": 0.2}
    two_alphas = {"quantization": {"recipes": {"smooth_quant": [0.5, 0.8], "bias_correction": True}}}
    with_recipes = run_fake(tmp_path / "r", FakeAdaptor(ops=4, recipe_gains=gains), BasicStrategy(seed=1), two_alphas)
    notes = history_notes(with_recipes)
    assert notes[4:8] == ["stage 1b: smooth_quant 0.5", "stage 1b: smooth_quant 0.8", "stage 1b: bias_correction",
                          "stage 1b: smooth_quant 0.8, bias_correction (each recipe's best)"]
    assert notes[8:10] == ["stage 3: +op3 -> bf16 (1/4 ops)", "stage 3: +op2 -> bf16 (2/4 ops)"]
    best = with_recipes.summary.best
    assert best.recipes == {"smooth_quant": 0.8, "bias_correction": True}
    assert sorted(best.fallback_ops) == ["op2", "op3"] and best.accuracy == 0.992
    plain = run_fake(tmp_path / "p", FakeAdaptor(ops=4, recipe_gains=gains), BasicStrategy(seed=1))
    assert plain.summary.best.recipes == {} and len(plain.summary.best.fallback_ops) == 3


def test_a_recipe_the_framework_lacks_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"recipes.cle is not available with framework=fake; valid choices "
                                          r"there: \['smooth_quant'\]"):
        run_fake(tmp_path, FakeAdaptor(ops=4, recipe_gains={"smooth_quant=0.5": 0.01}), BasicStrategy(seed=1),
                 {"quantization": {"recipes": {"cle": True}}})


def test_order_impact_per_ms_falls_back_what_recovers_most_per_millisecond_first(tmp_path):
    # impact follows the penalties (op3 first); op0 and op1 save only 0.1 ms in INT8 (3.9 against FP32's 4),
    # op2 and op3 3 ms: per millisecond given back, op1 (0.02 / 0.1) and op0 lead, then op3 (0.04 / 3)
    costs = {"op0": 3.9, "op1": 3.9}
    notes = {order: [n for n in history_notes(run_fake(tmp_path / order, FakeAdaptor(ops=4, int8_ms=costs),
                                                       BasicStrategy(seed=1, order=order)))
                     if n.startswith("stage 3")] for order in ("impact", "impact_per_ms")}
    assert [n.split()[2] for n in notes["impact"]][:2] == ["+op3", "+op2"]
    assert [n.split()[2] for n in notes["impact_per_ms"]][:3] == ["+op1", "+op0", "+op3"]
    with pytest.raises(ConfigError, match=r"strategy.order='fastest' is unknown; valid choices: \['impact', "
                                          r"'impact_per_ms'\]"):
        BasicStrategy(order="fastest")


def test_a_run_is_resumed_only_with_the_recipes_it_was_tuned_with(tmp_path):
    gains = {"smooth_quant=0.5": 0.4, "bias_correction": 0.2}
    short = {**RECIPES, "exit_policy": {"timeout": 0, "max_trials": 5}}
    run_fake(tmp_path, FakeAdaptor(ops=4, recipe_gains=gains), BasicStrategy(seed=1), short)
    with pytest.raises(ConfigError, match="holds a different run"):
        run_fake(tmp_path, FakeAdaptor(ops=4, recipe_gains=gains), BasicStrategy(seed=1), resume=True)
    resumed = run_fake(tmp_path, FakeAdaptor(ops=4, recipe_gains=gains), BasicStrategy(seed=1), RECIPES, resume=True)
    assert resumed.summary.met_criterion and resumed.summary.best.recipes
