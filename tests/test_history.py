import json
import os

import pytest

from lpot_research.core.errors import ConfigError
from lpot_research.quant.space import config_id
from lpot_research.run.history import (
    EVAL_ORDER,
    OP_ERRORS,
    SENSITIVITY,
    History,
    RunRecordError,
    TrialRecord,
    analysis_key,
)


def rec(n, **kw):
    config = {"approach": "post_training_static_quant", "sampling_size": 1, "ops": {"b": {"dtype": "fp32"},
                                                                                   "a": {"dtype": "int8"}}, "n": n}
    return TrialRecord(trial=n, config_id=config_id(config), config=config, status="ok", accuracy=0.5,
                       objective=1.0, **kw)


def test_round_trip_and_run_header(tmp_path):
    h = History(tmp_path, "key", {"seed": 1})
    h.set_baseline({"accuracy": 1.0})
    h.add(rec(1))
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"kind": "run", "run_key": "key", "run": {"seed": 1}}
    again = History(tmp_path, "key")
    assert again.baseline["accuracy"] == 1.0 and [t.trial for t in again.trials] == [1]
    # the ops keep their order (a config read back lists them as the model does, not sorted)
    assert list(again.trials[0].config["ops"]) == ["b", "a"]
    assert History.read(tmp_path).trials[0].config_id == rec(1).config_id


def test_unterminated_last_line_is_dropped_even_if_it_parses(tmp_path):
    h = History(tmp_path, "key")
    h.add(rec(1))
    h.add(rec(2))
    p = tmp_path / "history.jsonl"
    p.write_bytes(p.read_bytes()[:-1])  # the kill landed just before the newline
    h2 = History(tmp_path, "key")
    assert [t.trial for t in h2.trials] == [1]
    h2.add(rec(2))
    h2.add(rec(3))
    assert [t.trial for t in History(tmp_path, "key").trials] == [1, 2, 3]


def test_corrupt_middle_line_is_an_error_not_a_truncation(tmp_path):
    h = History(tmp_path, "key")
    h.add(rec(1))
    h.add(rec(2))
    p = tmp_path / "history.jsonl"
    lines = p.read_text().splitlines()
    lines[1] = lines[1][:20]
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="line 2 is corrupt"):
        History(tmp_path, "key")
    assert len(p.read_text().splitlines()) == 3  # nothing was cut


def test_empty_file_gets_a_header(tmp_path):
    (tmp_path / "history.jsonl").write_text("")
    h = History(tmp_path, "key")
    h.add(rec(1))
    with pytest.raises(ConfigError, match="different run"):
        History(tmp_path, "other")


def _drop_header(text):  # a modelsize run's bytes must never be read as a performance run's milliseconds
    return "\n".join(text.splitlines()[1:]) + "\n"


def _config_not_matching_its_id(text):
    return text.replace('"a": {"dtype": "int8"}', '"a": {"dtype": "fp32"}')


def _trial_repeated(text):
    return text + text.splitlines()[1] + "\n"


@pytest.mark.parametrize("tamper,needle", [
    (_drop_header, "has no run header"),
    (_config_not_matching_its_id, "line 2 has a config that does not match its config_id"),
    (_trial_repeated, "line 3 is trial 1, expected 2"),
])
def test_a_tampered_history_is_refused(tmp_path, tamper, needle):
    History(tmp_path, "key").add(rec(1))
    p = tmp_path / "history.jsonl"
    p.write_text(tamper(p.read_text()))
    with pytest.raises(ConfigError, match=needle):
        History(tmp_path, "key")


def test_a_refused_resume_names_the_settings_that_differ(tmp_path):
    History(tmp_path, "k1", {"seed": 1, "objective": {"class": "Performance"}, "same": 3}).add(rec(1))
    with pytest.raises(ConfigError, match=r"different run \(objective.class: Performance -> ModelSize; seed: 1 -> 2\)"):
        History(tmp_path, "k2", {"seed": 2, "objective": {"class": "ModelSize"}, "same": 3})


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (a device every write to fails)")
def test_an_unwritable_history_is_a_run_record_error_naming_the_file(tmp_path):
    h = History(tmp_path, "key")
    h.add(rec(1))
    p = tmp_path / "history.jsonl"
    p.rename(tmp_path / "kept.jsonl")
    p.symlink_to("/dev/full")  # the disk is full (chmod does not stop root)
    with pytest.raises(RunRecordError, match=r"cannot write .*history.jsonl: No space left on device"):
        h.add(rec(2))
    assert len(h.trials) == 1  # the lost trial is not on record in memory either


def test_later_measurements_and_analysis_are_merged_on_reading(tmp_path):
    h = History(tmp_path, "key")
    r = rec(1, rejected=True)
    r.accuracy = None
    h.add(r)
    h.measure(r, accuracy=0.7, metrics={"latency_ms": 2.0}, objective=2.0)
    h.add_analysis(EVAL_ORDER, [2, 0, 1])
    back = History.read(tmp_path)
    assert (back.trials[0].accuracy, back.trials[0].metrics["latency_ms"], back.trials[0].objective) == (0.7, 2.0, 2.0)
    assert back.analysis[EVAL_ORDER] == [2, 0, 1]


def test_per_config_analyses_are_read_by_kind_and_counted(tmp_path):
    h = History(tmp_path, "key")
    h.add_analysis(analysis_key(SENSITIVITY, "c1"), {"op0": 0.5})
    h.add_analysis(analysis_key(SENSITIVITY, "c1"), {"op0": 0.5, "op1": 0.2})  # extends the first record
    h.add_analysis(analysis_key(OP_ERRORS, "c1"), {"op0": 1.0})
    back = History.read(tmp_path)
    assert back.per_config(SENSITIVITY) == {"c1": {"op0": 0.5, "op1": 0.2}}
    assert back.analysis_records == {analysis_key(SENSITIVITY, "c1"): 2, analysis_key(OP_ERRORS, "c1"): 1}


def test_start_writes_the_header_once_and_never_into_a_read_only_history(tmp_path):
    h = History(tmp_path, "key", {"seed": 1})
    h.start()
    h.start()
    assert History.read(tmp_path).header == {"run_key": "key", "run": {"seed": 1}}
    assert len((tmp_path / "history.jsonl").read_text().splitlines()) == 1
    with pytest.raises(RunRecordError, match="opened for reading only"):
        History(tmp_path / "new", None, read_only=True).start()
    assert not History.exists(tmp_path / "new")
