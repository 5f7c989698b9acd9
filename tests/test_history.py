import json

import pytest

from lpot_research.errors import ConfigError
from lpot_research.history import History, TrialRecord


def rec(n):
    return TrialRecord(trial=n, config_id=f"id{n}", config={"n": n}, status="ok", accuracy=0.5, objective=1.0)


def test_round_trip_and_run_header(tmp_path):
    h = History(tmp_path, "key")
    h.set_baseline({"accuracy": 1.0})
    h.add(rec(1))
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"kind": "run", "run_key": "key"}
    again = History(tmp_path, "key")
    assert again.baseline["accuracy"] == 1.0 and [t.config_id for t in again.trials] == ["id1"]


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
