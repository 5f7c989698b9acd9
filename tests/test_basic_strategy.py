"""The basic strategy's stage order, on a fake framework whose accuracy landscape is known.

Landscape (FakeAdaptor defaults, 4 ops): an INT8 op i costs 0.01*(i+1) accuracy with minmax calibration
and half that with kl; a bf16 op costs 0.001. FP32 accuracy is 1.0 and the criterion is 1% relative.
"""

from lpot_research.strategies.basic import BasicStrategy
from tests.fakes import FakeAdaptor
from tests.helpers import history_notes, run_fake


def test_stage_order_and_stop_when_met(tmp_path):
    res = run_fake(tmp_path, FakeAdaptor(ops=4), BasicStrategy(seed=1))
    notes = history_notes(res)
    # stage 1: the four model-wise configs (weight sym/per_channel x act asym|sym x minmax|kl)
    assert all(n.startswith("model-wise") for n in notes[:4]) and len(notes[:4]) == 4
    # stage 2: each op alone to bf16, bottom-up, from the best model-wise config (kl, accuracy 0.95)
    assert notes[4:8] == [f"stage 2: op{i} -> bf16 alone" for i in (3, 2, 1, 0)]
    # stage 2b: none passed alone, so the first 2 ops (half of 4) fall back together: 0.963, fails
    assert notes[8] == "stage 2b: first 2 ops -> bf16"
    # stage 3: cumulative in impact order op3, op2, op1; "+op3" repeats a stage-2 config, so it is
    # answered from history without a trial; +op1 reaches 0.992 >= 0.99 and ends the run
    assert notes[9:] == ["stage 3: +op2 -> bf16 (2/4 ops)", "stage 3: +op1 -> bf16 (3/4 ops)"]
    s = res.summary
    assert s["met_criterion"] and s["trials"] == 11
    assert sorted(s["best"]["fallback_ops"]) == ["op1", "op2", "op3"]
    assert set(s["best"]["fallback_dtypes"].values()) == {"bf16"}
    assert s["best"]["accuracy"] == 0.992


BLOCK = {"ops": 8, "penalties": [0.01] * 4 + [0.0005] * 4}  # the first four of eight ops carry the error


def test_block_stage_finds_the_input_side_prefix(tmp_path):
    # no single op's fallback passes (best: 0.984); first 2 -> bf16 gives 0.987, first 3 gives 0.991:
    # with timeout 0 the first pass ends the run, so k grows one at a time from 2
    res = run_fake(tmp_path, FakeAdaptor(**BLOCK), BasicStrategy())
    notes = history_notes(res)
    assert notes[12:] == ["stage 2b: first 2 ops -> bf16", "stage 2b: first 3 ops -> bf16"]
    s = res.summary
    assert s["met_criterion"] and s["trials"] == 4 + 8 + 2
    assert sorted(s["best"]["fallback_ops"]) == ["op0", "op1", "op2"]


def test_block_stage_bisects_with_a_time_budget(tmp_path):
    # timeout > 0: first 4 passes (0.995), then 2 fails and 3 passes; stage 3 follows in case it finds
    # a config with fewer fallbacks (it does not here: its first pass needs op3..op1 in bf16)
    res = run_fake(tmp_path, FakeAdaptor(**BLOCK), BasicStrategy(), config={"exit_policy": {"timeout": 3600}})
    notes = history_notes(res)
    assert notes[12:15] == [f"stage 2b: first {k} ops -> bf16" for k in (4, 2, 3)]
    assert all(n.startswith("stage 3") for n in notes[15:])
    assert sorted(res.summary["best"]["fallback_ops"]) == ["op0", "op1", "op2"]


def test_impact_order_follows_stage2_accuracy(tmp_path):
    # op0 is now the most sensitive op: it must be the first to fall back in stage 3
    res = run_fake(tmp_path, FakeAdaptor(ops=4, penalties=[0.05, 0.001, 0.001, 0.001]), BasicStrategy())
    notes = history_notes(res)
    stage3 = [n for n in notes if n.startswith("stage 3")]
    assert stage3 == [] or stage3[0].startswith("stage 3: +op0")
    assert res.summary["met_criterion"]
    assert res.summary["best"]["fallback_ops"] == ["op0"]


def test_fp32_after_bf16_is_not_enough(tmp_path):
    # bf16 costs too much accuracy for any bf16 fallback to pass: the fp32 stages follow
    res = run_fake(tmp_path, FakeAdaptor(ops=3, bf16_penalty=0.02), BasicStrategy())
    notes = history_notes(res)
    first_fp32 = next(i for i, n in enumerate(notes) if "fp32" in n)
    assert all("fp32" not in n for n in notes[:first_fp32])
    assert any(n.startswith("stage 3") and "bf16" in n for n in notes[:first_fp32])
    assert notes[first_fp32].startswith("stage 2: op2 -> fp32")
    assert res.summary["met_criterion"]
    assert set(res.summary["best"]["fallback_dtypes"].values()) == {"fp32"}


def test_passing_model_wise_config_ends_after_stage1(tmp_path):
    res = run_fake(tmp_path, FakeAdaptor(ops=3, penalties=[0.001] * 3), BasicStrategy(),
                   config={"exit_policy": {"timeout": 3600}})
    notes = history_notes(res)
    assert len(notes) == 4 and all(n.startswith("model-wise") for n in notes)
    assert res.summary["met_criterion"] and res.summary["stop_reason"].startswith("strategy finished")


def test_first_pass_stops_with_timeout_zero(tmp_path):
    res = run_fake(tmp_path, FakeAdaptor(ops=3, penalties=[0.001] * 3), BasicStrategy())
    assert res.summary["trials"] == 1 and res.summary["met_criterion"]
    assert "first passing" in res.summary["stop_reason"]


def test_failing_op_is_routed_around(tmp_path):
    # every config with op0 in INT8 fails to quantize: stage 1 fails entirely, fallback finds the way
    res = run_fake(tmp_path, FakeAdaptor(ops=3, fail_ops=["op0"]), BasicStrategy())
    s = res.summary
    assert s["failed_trials"] >= 4 and s["met_criterion"]
    assert "op0" in s["best"]["fallback_ops"]
