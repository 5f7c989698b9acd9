"""Every built-in strategy passes the shared contract; plus what is particular to each."""

import json

import pytest

from lpot_research.strategies.basic import BasicStrategy
from lpot_research.strategies.bayesian import BayesianStrategy
from lpot_research.strategies.exhaustive import ExhaustiveStrategy
from lpot_research.strategies.mse import MSEStrategy
from lpot_research.strategies.random import RandomStrategy
from lpot_research.strategies.tpe import TPEStrategy
from tests.fakes import FakeAdaptor
from tests.helpers import history_notes, run_fake
from tests.strategy_contract import LONG, NO_PASS, TWO_WORKERS, StrategyContract, merge, trials


class TestBasic(StrategyContract):
    strategy = BasicStrategy


class TestMSE(StrategyContract):
    strategy = MSEStrategy


class TestExhaustive(StrategyContract):
    strategy = ExhaustiveStrategy
    proposes_recipes = False  # its walk changes the last op first: 12 trials never reach a recipe


class TestRandom(StrategyContract):
    strategy = RandomStrategy


class TestBayesian(StrategyContract):
    strategy = BayesianStrategy
    options = {"pool": 256}


class TestTPE(StrategyContract):
    strategy = TPEStrategy


def test_mse_orders_fallback_by_output_error_without_stage2_trials(tmp_path):
    res = run_fake(tmp_path, FakeAdaptor(ops=4, penalties=[0.04, 0.01, 0.03, 0.02], bf16_penalty=0.0),
                   MSEStrategy())
    notes = history_notes(res)
    assert not any(n.startswith("stage 2:") for n in notes)  # no single-op trials (the block stage 2b runs)
    stage3 = [n for n in notes if n.startswith("stage 3")]
    # the largest error (op0) falls back first, then op2
    assert stage3[0].startswith("stage 3: +op0") and stage3[1].startswith("stage 3: +op2")
    assert res.summary.met_criterion


def test_exhaustive_walks_quantized_configs_in_order(tmp_path, caplog):
    caplog.set_level("INFO")
    res = run_fake(tmp_path, FakeAdaptor(ops=2, penalties=[0.1, 0.1]), ExhaustiveStrategy(),
                   merge(LONG, {"exit_policy": {"max_trials": 100}}))
    t = trials(res)
    assert res.summary.stop_reason.startswith("strategy finished")
    assert len(t) == res.space.quantized_size() == 16  # (2 act schemes x 2 algorithms)^2 ops
    assert all(all(op["dtype"] == "int8" for op in x.config["ops"].values()) for x in t)
    assert "16 quantized configuration(s)" in caplog.text


def test_exhaustive_warns_when_space_exceeds_max_trials(tmp_path, caplog):
    run_fake(tmp_path, FakeAdaptor(ops=4, penalties=[0.1] * 4), ExhaustiveStrategy(),
             merge(LONG, {"exit_policy": {"max_trials": 5}}))
    assert "exceeds max_trials (5)" in caplog.text


def test_random_differs_by_seed_and_covers_fallbacks(tmp_path):
    a = run_fake(tmp_path / "a", FakeAdaptor(ops=5), RandomStrategy(seed=1), merge(NO_PASS, LONG))
    b = run_fake(tmp_path / "b", FakeAdaptor(ops=5), RandomStrategy(seed=2), merge(NO_PASS, LONG))
    assert [t.config_id for t in trials(a)] != [t.config_id for t in trials(b)]
    dtypes = {op["dtype"] for t in trials(a) for op in t.config["ops"].values()}
    assert dtypes == {"int8", "bf16"}


@pytest.mark.parametrize("strategy", [BayesianStrategy, TPEStrategy])
@pytest.mark.parametrize("n_configs", [2, 3])
def test_model_based_strategies_end_promptly_on_tiny_spaces(tmp_path, strategy, n_configs):
    dtypes = ["uint8", "fp32"] if n_configs == 2 else ["uint8", "bf16", "fp32"]
    cfg = {"quantization": {"model_wise": {"weight": {"granularity": "per_channel"},
                                           "activation": {"scheme": "asym", "algorithm": "minmax",
                                                          "dtype": dtypes}},
                            "op_wise": {"op0": {"activation": {"dtype": ["fp32"]}}}},
           "accuracy_criterion": {"kind": "absolute", "tolerance": 0.0},
           "exit_policy": {"timeout": 3600, "max_trials": 100}}
    res = run_fake(tmp_path, FakeAdaptor(ops=2, penalties=[0.1, 0.1], bf16_penalty=0.05), strategy(seed=0), cfg)
    assert res.space.size == n_configs
    assert res.summary.trials == n_configs and res.summary.stop_reason.startswith("strategy finished")
    assert res.summary.elapsed_s < 20


def test_model_based_strategies_find_the_fast_passing_config(tmp_path):
    # only op3 is sensitive: the best passing configs keep every other op in int8
    landscape = dict(ops=5, penalties=[0.001, 0.001, 0.001, 0.05, 0.001], bf16_penalty=0.0)
    cfg = merge({"exit_policy": {"timeout": 3600, "max_trials": 40}},
                {"quantization": {"model_wise": {"activation": {"algorithm": "minmax"}}}})
    for strategy in (BayesianStrategy(seed=0, pool=512), TPEStrategy(seed=0)):
        res = run_fake(tmp_path / strategy.name, FakeAdaptor(**landscape), strategy, cfg)
        s = res.summary
        assert s.met_criterion, strategy.name
        assert s.best.latency_ms <= 7.0, (strategy.name, s.best)  # optimum 6: op3 bf16, rest int8
        json.dumps(s.to_dict())


# 60 ops, of which three carry the error: the space has 3^60 configurations
SPARSE = {"ops": 60, "penalties": [0.01 if i in (7, 23, 41) else 0.0002 for i in range(60)]}


@pytest.mark.parametrize("strategy", [TPEStrategy(), BayesianStrategy(pool=256)], ids=["tpe", "bayesian"])
def test_model_based_strategies_start_from_what_the_run_knows(tmp_path, strategy):
    """The model-wise configs, then the per-op sensitivity ladder (the 1, 2, 4 most sensitive ops falling
    back): on 60 ops they reach the goal in as few trials as basic, where random starting points find
    nothing in 60 trials."""
    basic = run_fake(tmp_path / "basic", FakeAdaptor(**SPARSE), BasicStrategy(refine=0))
    res = run_fake(tmp_path / "model", FakeAdaptor(**SPARSE), strategy, {"exit_policy": {"max_trials": 60}})
    notes = history_notes(res)
    assert all(n.startswith(f"{strategy.name} {i} (prior: model-wise") for i, n in enumerate(notes[:4], 1))
    assert notes[4:] == [f"{strategy.name} {4 + i} (prior: the {k} most sensitive op(s) fall back)"
                         for i, k in enumerate((1, 2, 4), 1)]
    s = res.summary
    assert s.met_criterion and s.trials <= 2 * basic.summary.trials
    assert {"op7", "op23", "op41"} <= set(s.best.fallback_ops)


# 10 ops, 7 of which must fall back: the ladder's rungs (1, 2, 4: up to half the ops) all miss the goal
BEYOND_THE_RUNGS = {"ops": 10, "penalties": [0.0001 if i in (0, 4, 7) else 0.01 for i in range(10)]}
FP32_FALLBACK = {"quantization": {"model_wise": {"activation": {"algorithm": "minmax", "dtype": ["uint8", "fp32"]}}}}


@pytest.mark.parametrize("strategy", [TPEStrategy(), BayesianStrategy(pool=256)], ids=["tpe", "bayesian"])
def test_model_based_strategies_fill_the_ladder_around_its_closest_rung(tmp_path, strategy):
    """No rung of the ladder passes: the configs between the rungs around the closest one (4, the last) are
    tried next, nearest first and fewer first at equal distance, up to twice its fallbacks, and the 7
    ops that carry the error pass, in as few trials as basic's cumulative fallback."""
    basic = run_fake(tmp_path / "basic", FakeAdaptor(**BEYOND_THE_RUNGS), BasicStrategy(refine=0), FP32_FALLBACK)
    res = run_fake(tmp_path / "model", FakeAdaptor(**BEYOND_THE_RUNGS), strategy, FP32_FALLBACK)
    notes = history_notes(res)
    fill = " (around the closest rung, 4, between 2 and 8))"
    assert notes[2:] == [f"{strategy.name} {2 + i} (prior: the {k} most sensitive op(s) fall back{how}"
                         for i, (k, how) in enumerate([(1, ")"), (2, ")"), (4, ")"), (3, fill), (5, fill),
                                                       (6, fill), (7, fill)], 1)]
    s = res.summary
    assert s.met_criterion and s.trials <= basic.summary.trials, (s.trials, basic.summary.trials)
    assert set(s.best.fallback_ops) == {f"op{i}" for i in (1, 2, 3, 5, 6, 8, 9)}
    if isinstance(strategy, TPEStrategy):  # with a budget, the sampler is told each prior config's score
        run_fake(tmp_path / "budget", FakeAdaptor(**BEYOND_THE_RUNGS), strategy,
                 merge(FP32_FALLBACK, {"exit_policy": {"timeout": 3600, "max_trials": len(notes) + 2}}))
        told = [t.value for t in strategy.study.trials if t.value is not None]
        assert len(told) >= len(notes) and told[2] < told[3] < told[4] < told[len(notes) - 1], told


@pytest.mark.parametrize("strategy", [TPEStrategy, BayesianStrategy], ids=["tpe", "bayesian"])
def test_the_ladder_fill_is_the_same_on_two_workers_and_after_a_resume(tmp_path, strategy):
    """The strategy contract through the fill (its own landscape has no config between passing rungs):
    the same configs in the same order and the same best serially, on two workers, and resumed from a
    run stopped inside the fill."""
    cfg = merge(FP32_FALLBACK, {"exit_policy": {"timeout": 3600, "max_trials": 13}})
    make = lambda: strategy(seed=5, **({"pool": 256} if strategy is BayesianStrategy else {}))  # noqa: E731
    serial = run_fake(tmp_path / "serial", FakeAdaptor(**BEYOND_THE_RUNGS), make(), cfg)
    notes = history_notes(serial)
    assert sum("around the closest rung" in n for n in notes) == 4 and len(notes) == 13
    par = run_fake(tmp_path / "two", FakeAdaptor(**BEYOND_THE_RUNGS), make(), merge(cfg, TWO_WORKERS))
    run_fake(tmp_path / "resumed", FakeAdaptor(**BEYOND_THE_RUNGS), make(),
             merge(cfg, {"exit_policy": {"max_trials": 7}}))  # stops after the fill's first two configs
    resumed = run_fake(tmp_path / "resumed", FakeAdaptor(**BEYOND_THE_RUNGS), make(), cfg)
    ids = [t.config_id for t in trials(serial)]
    for run in (par, resumed):
        assert [t.config_id for t in trials(run)] == ids
        assert run.summary.best.config_id == serial.summary.best.config_id


@pytest.mark.parametrize("strategy", [TPEStrategy(), BayesianStrategy(pool=256)], ids=["tpe", "bayesian"])
def test_model_based_strategies_look_for_fewer_fallbacks_below_a_passing_rung(tmp_path, strategy):
    """With a budget, the rungs go on after the first pass (4 ops), and the ks between the largest failing
    rung (2) and it are tried next, fewest first: the 3 ops that carry the error pass, faster."""
    res = run_fake(tmp_path, FakeAdaptor(**SPARSE), strategy, {"exit_policy": {"timeout": 3600, "max_trials": 10}})
    notes = history_notes(res)
    assert notes[4:10] == [f"{strategy.name} {4 + i} (prior: the {k} most sensitive op(s) fall back{how}"
                           for i, (k, how) in enumerate([(1, ")"), (2, ")"), (4, ")"), (8, ")"), (16, ")"),
                                                         (3, " (fewest fallbacks between rungs 2 (fails) and "
                                                             "4 (passes)))")], 1)]
    best = res.summary.best
    assert best.trial == 10 and set(best.fallback_ops) == {"op7", "op23", "op41"}


def test_random_and_exhaustive_say_how_much_of_the_space_they_cover(tmp_path, caplog):
    caplog.set_level("INFO", logger="lpot_research")
    run_fake(tmp_path / "r", FakeAdaptor(**SPARSE), RandomStrategy(), {"exit_policy": {"max_trials": 20}})
    run_fake(tmp_path / "e", FakeAdaptor(**SPARSE), ExhaustiveStrategy(), {"exit_policy": {"max_trials": 20}})
    said = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("random (a baseline") and "max_trials=20 covers at most 4.1e-44% of them" in m
               for m in said)
    assert any(m.startswith("exhaustive: the space (1.33e+36 configs) exceeds max_trials (20)") and
               "(1.5e-33% of it)" in m for m in said)


@pytest.mark.parametrize("strategy", [TPEStrategy, BayesianStrategy], ids=["tpe", "bayesian"])
def test_the_prior_tries_the_recipes_before_the_ladder_and_climbs_it_from_the_best_of_them(tmp_path, strategy):
    # 4 ops, all-INT8 (kl) 0.95; SmoothQuant 0.5 removes 40% of the loss (0.98), bias correction 20%: the
    # rungs (1, 2 ops in BF16) are built on the SmoothQuant config, and its 2-fallback rung passes (0.992)
    gains = {"smooth_quant=0.5": 0.4, "bias_correction": 0.2}
    recipes = {"quantization": {"recipes": {"smooth_quant": [0.5], "bias_correction": True}}}
    res = run_fake(tmp_path, FakeAdaptor(ops=4, recipe_gains=gains), strategy(seed=1), recipes)
    notes = history_notes(res)
    name = strategy.name
    assert notes[4:7] == [f"{name} 5 (prior: recipes: smooth_quant 0.5)", f"{name} 6 (prior: recipes: bias_correction)",
                          f"{name} 7 (prior: recipes: smooth_quant 0.5, bias_correction (each recipe's best))"]
    rungs = [t for t in trials(res) if "rung" in t.note or "most sensitive" in t.note]
    assert rungs and all(t.config.get("recipes") == {"smooth_quant": 0.5, "bias_correction": True} for t in rungs)
    assert res.summary.met_criterion and res.summary.best.recipes
