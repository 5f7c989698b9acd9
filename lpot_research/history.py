"""The run's record: history.jsonl, appended (flushed and fsynced) as each trial finishes, so a killed run
loses no finished trial and resumes from the file. `History` is the only reader and writer of it: the
tuner, the scripts and the tests all go through this class.

Lines, each a JSON object with a `kind`:
- `run` (first line): the run key and the description it hashes (framework, model fingerprint, space
  settings, criterion, objective, strategy, seed, ...); a resume into a different run is refused,
  naming the settings that differ.
- `baseline`: the FP32 model's accuracy and measurements.
- `trial`: one finished trial (`TrialRecord`), numbered 1, 2, ... without gaps.
- `measure`: measurements (or a completed evaluation) added to a trial later, when a report needs them.
- `ahead`: a trial that finished on a worker before an earlier one (parallel runs take results in
  proposal order); it becomes a `trial` line in its turn, and a resumed run takes it from here instead
  of running it again.
- `stopped`: a trial stopped by the time budget or Ctrl-C (not finished: a resume runs it again).
- `analysis`: a result that is not a trial (e.g. basic's per-op sensitivity, the evaluation order), keyed,
  so a resumed run reuses it instead of recomputing it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from lpot_research.errors import ConfigError, LpotError
from lpot_research.space import config_id

log = logging.getLogger(__name__)


class RunRecordError(LpotError):
    """The run's own records cannot be read or written (a fatal error, never a strategy's fault)."""


@dataclass
class TrialRecord:
    trial: int  # 1-based count of evaluated configs in this run (across resumes)
    config_id: str
    config: dict[str, Any]
    status: str  # "ok" | "failed"
    accuracy: float | None = None  # on the whole evaluation set; None when the evaluation stopped early
    passed: bool = False
    # on the ranking subset (the first samples of the evaluation order): what a failing config is ranked
    # by, identical whether or not its evaluation stopped early (= accuracy when there is no subset)
    rank_accuracy: float | None = None
    rejected: bool = False  # the evaluation stopped once the criterion could no longer be met
    accuracy_bound: float | None = None  # when rejected: the best accuracy the whole set could still give
    samples: int | None = None  # evaluation samples scored (None: an eval_func, which does not say)
    objective: float | None = None  # None until measured (failing trials are measured only when needed)
    metrics: dict[str, float] = field(default_factory=dict)  # latency_ms, latency_ratio, size_bytes, ...
    costs: dict[str, float] = field(default_factory=dict)  # seconds: calibrate, quantize, evaluate, benchmark
    note: str = ""
    error: str | None = None
    duration_s: float = 0.0
    elapsed_s: float = 0.0  # wall clock since the run started (summed across resumes)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def decision_accuracy(self) -> float | None:
        """What strategies and rankings see: the whole-set accuracy of a passing config, the ranking
        accuracy of a failing one."""
        return self.accuracy if self.passed else self.rank_accuracy

    @property
    def shown_accuracy(self) -> float | None:
        """For people: the whole-set accuracy, else the bound a rejected evaluation stopped at."""
        return self.accuracy if self.accuracy is not None else self.accuracy_bound

    def to_json(self) -> str:
        return json.dumps({"kind": "trial", **asdict(self)})


_TRIAL_FIELDS = {f.name for f in fields(TrialRecord)}


def metric_ratio(rec: TrialRecord | None, baseline: dict[str, Any], key: str) -> float | None:
    """A trial's measurement relative to the FP32 baseline's (for latency, the ratio measured against
    FP32 timed alongside it); None when either is missing."""
    if rec is None:
        return None
    if key == "latency_ms" and rec.metrics.get("latency_ratio") is not None:
        return rec.metrics["latency_ratio"]
    if key not in rec.metrics or not baseline.get(key):
        return None
    return rec.metrics[key] / baseline[key]


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def describe_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The settings that differ between two run descriptions, e.g. "seed: 1 -> 2"."""
    a, b = _flatten(old), _flatten(new)
    diffs = [f"{k}: {a.get(k, '(unset)')} -> {b.get(k, '(unset)')}" for k in sorted(set(a) | set(b))
             if a.get(k) != b.get(k)]
    if not diffs:
        return "the run descriptions match but their keys do not (another version of lpot-research wrote it)"
    shown = "; ".join(diffs[:4])
    return shown + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")


class History:
    """The append-only log of one run.

    `History(run_dir, run_key, description)` opens a run for writing: an existing file must belong to
    the same run. `History.read(run_dir)` opens one for reading only (scripts, reports, tests).
    """

    FILENAME = "history.jsonl"

    def __init__(self, run_dir: str | os.PathLike, run_key: str | None, description: dict[str, Any] | None = None,
                 *, read_only: bool = False) -> None:
        self.path = Path(run_dir) / self.FILENAME
        self.run_key = run_key
        self.description = description or {}
        self.read_only = read_only
        self.header: dict[str, Any] | None = None
        self.baseline: dict[str, Any] | None = None
        self.trials: list[TrialRecord] = []
        self.stopped: list[dict[str, Any]] = []
        self.ahead: dict[str, TrialRecord] = {}  # finished ahead of their turn, by config id
        self.ahead_written = 0  # `ahead` lines in the file (most became trials since)
        self.analysis: dict[str, Any] = {}
        self.analysis_seconds: dict[str, float] = {}  # what each analysis cost to compute (its last record)
        self._load()

    @classmethod
    def read(cls, run_dir: str | os.PathLike) -> History:
        """A finished or killed run's record, for reading."""
        h = cls(run_dir, None, read_only=True)
        if h.header is None:
            raise RunRecordError(f"{h.path} does not exist or holds no run")
        return h

    @classmethod
    def exists(cls, run_dir: str | os.PathLike) -> bool:
        p = Path(run_dir) / cls.FILENAME
        return p.exists() and p.stat().st_size > 0

    # ------------------------------------------------------------------ reading
    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            data = self.path.read_bytes()
        except OSError as e:
            raise RunRecordError(f"cannot read {self.path}: {e.strerror or e}") from None
        # Only newline-terminated lines were written completely; a kill mid-write leaves an
        # unterminated tail, which is dropped (and cut from the file so new lines start clean).
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) < len(data) and not self.read_only:
            log.warning("history: dropping a partially written last line of %s", self.path)
            try:
                with open(self.path, "r+b") as f:
                    f.truncate(len(complete))
            except OSError as e:
                raise RunRecordError(f"cannot repair {self.path}: {e.strerror or e}") from None
        for number, raw in enumerate(complete.splitlines(), 1):
            if raw.strip():
                self._take(number, raw)
        if self.header is None and (self.trials or self.baseline is not None):
            raise ConfigError(f"{self.path} has no run header (first line); it was not written by this run: "
                              "move it away or resume the run that wrote it")

    def _corrupt(self, number: int, why: str) -> ConfigError:
        return ConfigError(f"{self.path} line {number} {why}; fix or remove that line")

    def _take(self, number: int, raw: bytes) -> None:
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError as e:
            raise self._corrupt(number, f"is corrupt ({e})") from None
        kind = rec.pop("kind", None) if isinstance(rec, dict) else None
        if self.header is None and kind != "run":
            raise ConfigError(f"{self.path} has no run header (first line); it was not written by this run: "
                              "move it away or resume the run that wrote it")
        if kind == "run":
            if self.header is not None:
                raise self._corrupt(number, "is a second run header")
            self.header = rec
            if self.run_key is not None and rec.get("run_key") != self.run_key:
                raise ConfigError(f"cannot resume from {self.path.parent}: it holds a different run "
                                  f"({describe_difference(rec.get('run') or {}, self.description)})")
        elif kind == "baseline":
            self.baseline = rec
        elif kind in ("trial", "ahead"):
            bad = set(rec) - _TRIAL_FIELDS
            if bad:
                raise self._corrupt(number, f"has unknown trial fields {sorted(bad)}")
            t = TrialRecord(**rec)
            if t.config_id != config_id(t.config):
                raise self._corrupt(number, f"has a config that does not match its config_id {t.config_id}")
            if kind == "ahead":
                self.ahead_written += 1
                if all(o.config_id != t.config_id for o in self.trials):
                    self.ahead[t.config_id] = t
                return
            self.ahead.pop(t.config_id, None)
            if t.trial != len(self.trials) + 1:
                raise self._corrupt(number, f"is trial {t.trial}, expected {len(self.trials) + 1}")
            if any(o.config_id == t.config_id for o in self.trials):
                raise self._corrupt(number, f"repeats config {t.config_id} (trial {t.trial})")
            self.trials.append(t)
        elif kind == "measure":
            n = rec.get("trial")
            if not isinstance(n, int) or not 1 <= n <= len(self.trials):
                raise self._corrupt(number, f"measures trial {n!r}, which is not on record")
            self._merge(self.trials[n - 1], rec)
        elif kind == "stopped":
            self.stopped.append(rec)
        elif kind == "analysis":
            self.analysis[str(rec.get("key"))] = rec.get("value")
            if isinstance(rec.get("seconds"), int | float):
                self.analysis_seconds[str(rec.get("key"))] = float(rec["seconds"])
        else:
            raise self._corrupt(number, f"has an unknown kind {kind!r}")

    @staticmethod
    def _merge(t: TrialRecord, m: dict[str, Any]) -> None:
        t.metrics.update(m.get("metrics") or {})
        t.costs.update(m.get("costs") or {})
        for key in ("objective", "accuracy", "samples"):
            if m.get(key) is not None:
                setattr(t, key, m[key])

    def by_id(self) -> dict[str, TrialRecord]:
        return {t.config_id: t for t in self.trials}

    # ------------------------------------------------------------------ writing
    def _append(self, obj: dict[str, Any]) -> None:
        if self.read_only:
            raise RunRecordError(f"{self.path} was opened for reading only")
        lines = []
        if self.header is None:  # a new (or empty) history: its first line names the run
            self.header = {"run_key": self.run_key, "run": self.description}
            lines.append(json.dumps({"kind": "run", **self.header}, default=str))
        lines.append(json.dumps(obj, default=str))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise RunRecordError(f"cannot write {self.path}: {e.strerror or e}; the run stops (its finished "
                                 "trials are in the file)") from None

    def start(self) -> None:
        """Write the run header now (before any work), so an unwritable run dir fails at once."""
        if self.header is None:
            self.header = {"run_key": self.run_key, "run": self.description}
            self._append_raw(json.dumps({"kind": "run", **self.header}, default=str))

    def _append_raw(self, line: str) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise RunRecordError(f"cannot write {self.path}: {e.strerror or e}") from None

    def set_baseline(self, baseline: dict[str, Any]) -> None:
        self._append({"kind": "baseline", **baseline})
        self.baseline = baseline

    def add(self, rec: TrialRecord) -> None:
        if rec.trial != len(self.trials) + 1:
            raise RunRecordError(f"trial {rec.trial} is out of order: {len(self.trials)} on record")
        self._append(json.loads(rec.to_json()))
        self.trials.append(rec)
        self.ahead.pop(rec.config_id, None)

    def add_ahead(self, rec: TrialRecord) -> None:
        """A trial finished before its turn (its number is provisional until `add`)."""
        self._append({**json.loads(rec.to_json()), "kind": "ahead"})
        self.ahead[rec.config_id] = rec
        self.ahead_written += 1

    def measure(self, rec: TrialRecord, **values: Any) -> None:
        """Add measurements (metrics, objective, a completed accuracy) to a recorded trial."""
        values = {k: v for k, v in values.items() if v is not None}
        self._append({"kind": "measure", "trial": rec.trial, **values})
        self._merge(rec, values)

    def add_stopped(self, info: dict[str, Any]) -> None:
        self._append({"kind": "stopped", **info})
        self.stopped.append(info)

    def add_analysis(self, key: str, value: Any, seconds: float | None = None) -> None:
        """A result that is not a trial; `seconds`: what computing it cost (a run's costs add them up; a
        record that extends an earlier one under the same key gives the total)."""
        obj = {"kind": "analysis", "key": key, "value": value}
        if seconds is not None:
            obj["seconds"] = round(float(seconds), 3)
            self.analysis_seconds[key] = float(obj["seconds"])
        self._append(obj)
        self.analysis[key] = value
