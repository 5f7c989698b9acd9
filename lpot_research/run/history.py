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
- `attempt`: a trial about to enter a phase (quantize, evaluate) in the tuning process, with its PID; one
  that no `trial` or `stopped` line follows was cut short by the process's death (lpot_research.run.crashes).
- `analysis`: a result that is not a trial (e.g. basic's per-op sensitivity, the evaluation order), keyed,
  so a resumed run reuses it instead of recomputing it. Its keys are made here only (`FP32_SCORES`,
  `EVAL_ORDER`, `analysis_key(kind, config_id)`), whoever writes or reads them.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from lpot_research.core.errors import ConfigError, LpotError
from lpot_research.quant.space import config_id

log = logging.getLogger(__name__)

# The keys of `analysis` records, defined once for every module that writes or reads them.
FP32_SCORES = "fp32_scores"  # the FP32 model's per-sample scores (the first INT8 scores order evaluation by them)
EVAL_ORDER = "eval_order"  # the evaluation order of the samples, set once per run
# the all-INT8 reference's latency when no trial of the run holds it: {config_id, latency_ms, latency_ratio, ...}
ALL_INT8 = "all_int8"
# per-op milliseconds in the FP32 and the all-INT8 model, from the framework's profiler (OpCosts.to_dict())
OP_COSTS = "op_costs"
# kinds of analysis kept per configuration, under analysis_key(kind, config_id):
SCORES = "scores"  # a trial's per-sample scores, kept while it waits ahead of its turn
SENSITIVITY = "sensitivity"  # per-op sensitivity around a base configuration (the basic strategy's stage 2)
OP_ERRORS = "op_errors"  # per-op output errors of a configuration (the mse strategy)


def analysis_key(kind: str, config_id: str) -> str:
    """The key of a per-configuration analysis, e.g. "sensitivity:<config id>"."""
    return f"{kind}:{config_id}"


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
        self._attempts: dict[str, dict[int, dict[str, Any]]] = {}  # unfinished attempts: config id -> pid -> last
        self.ahead: dict[str, TrialRecord] = {}  # finished ahead of their turn, by config id
        self.ahead_written = 0  # `ahead` lines in the file (most became trials since)
        self.analysis: dict[str, Any] = {}
        self.analysis_seconds: dict[str, float] = {}  # what each analysis cost to compute (its last record)
        self.analysis_records: dict[str, int] = {}  # records written per key (the last one holds the value)
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
        for number, raw in enumerate(complete.splitlines(), 1):  # (`_take` refuses any line before a header)
            if raw.strip():
                self._take(number, raw)

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
                self._attempts.pop(t.config_id, None)
                self.ahead_written += 1
                if all(o.config_id != t.config_id for o in self.trials):
                    self.ahead[t.config_id] = t
                return
            self.ahead.pop(t.config_id, None)
            self._attempts.pop(t.config_id, None)
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
            self._attempts.pop(str(rec.get("config_id")), None)
        elif kind == "attempt":
            self._attempts.setdefault(str(rec.get("config_id")), {})[int(rec.get("pid") or 0)] = rec
        elif kind == "analysis":
            key = str(rec.get("key"))
            self.analysis[key] = rec.get("value")
            self.analysis_records[key] = self.analysis_records.get(key, 0) + 1
            if isinstance(rec.get("seconds"), int | float):
                self.analysis_seconds[key] = float(rec["seconds"])
        else:
            raise self._corrupt(number, f"has an unknown kind {kind!r}")

    @staticmethod
    def _merge(t: TrialRecord, m: dict[str, Any]) -> None:
        t.metrics.update(m.get("metrics") or {})
        t.costs.update(m.get("costs") or {})
        for key in ("objective", "accuracy", "samples"):
            if m.get(key) is not None:
                setattr(t, key, m[key])

    def cut_short(self, cid: str) -> list[dict[str, Any]]:
        """The attempts at config `cid` that a process's death cut short (the last phase each process
        reached: {trial, config_id, phase, pid}); this process's own attempt is not one."""
        return [a for pid, a in self._attempts.get(cid, {}).items() if pid != os.getpid()]

    def by_id(self) -> dict[str, TrialRecord]:
        return {t.config_id: t for t in self.trials}

    def per_config(self, kind: str) -> dict[str, Any]:
        """The analyses of one `kind` (SCORES, SENSITIVITY, OP_ERRORS) by configuration id."""
        prefix = analysis_key(kind, "")
        return {k[len(prefix):]: v for k, v in self.analysis.items() if k.startswith(prefix)}

    # ------------------------------------------------------------------ writing
    def _append(self, obj: dict[str, Any] | None) -> None:
        """The one way a line reaches the file: `obj` (None: nothing but the run header), after the run
        header when the history is new (or empty)."""
        if self.read_only:
            raise RunRecordError(f"{self.path} was opened for reading only")
        header = {"run_key": self.run_key, "run": self.description} if self.header is None else None
        lines = [json.dumps({"kind": "run", **header}, default=str)] if header is not None else []
        if obj is not None:
            lines.append(json.dumps(obj, default=str))
        if not lines:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            after = "" if obj is None else "; the run stops (its finished trials are in the file)"
            raise RunRecordError(f"cannot write {self.path}: {e.strerror or e}{after}") from None
        if header is not None:
            self.header = header

    def start(self) -> None:
        """Write the run header now (before any work), so an unwritable run dir fails at once."""
        self._append(None)

    def set_baseline(self, baseline: dict[str, Any]) -> None:
        self._append({"kind": "baseline", **baseline})
        self.baseline = baseline

    def add(self, rec: TrialRecord) -> None:
        if rec.trial != len(self.trials) + 1:
            raise RunRecordError(f"trial {rec.trial} is out of order: {len(self.trials)} on record")
        self._append(json.loads(rec.to_json()))
        self.trials.append(rec)
        self.ahead.pop(rec.config_id, None)
        self._attempts.pop(rec.config_id, None)

    def add_ahead(self, rec: TrialRecord) -> None:
        """A trial finished before its turn (its number is provisional until `add`)."""
        self._append({**json.loads(rec.to_json()), "kind": "ahead"})
        self.ahead[rec.config_id] = rec
        self._attempts.pop(rec.config_id, None)
        self.ahead_written += 1

    def measure(self, rec: TrialRecord, **values: Any) -> None:
        """Add measurements (metrics, objective, a completed accuracy) to a recorded trial."""
        values = {k: v for k, v in values.items() if v is not None}
        self._append({"kind": "measure", "trial": rec.trial, **values})
        self._merge(rec, values)

    def add_stopped(self, info: dict[str, Any]) -> None:
        self._append({"kind": "stopped", **info})
        self.stopped.append(info)
        self._attempts.pop(str(info.get("config_id")), None)

    def add_attempt(self, trial: int, cid: str, phase: str) -> None:
        """Trial `trial` (config `cid`) enters `phase` in this process."""
        obj = {"kind": "attempt", "trial": trial, "config_id": cid, "phase": phase, "pid": os.getpid()}
        self._append(obj)
        self._attempts.setdefault(cid, {})[os.getpid()] = obj

    def add_analysis(self, key: str, value: Any, seconds: float | None = None) -> None:
        """A result that is not a trial; `seconds`: what computing it cost (a run's costs add them up; a
        record that extends an earlier one under the same key gives the total)."""
        obj = {"kind": "analysis", "key": key, "value": value}
        if seconds is not None:
            obj["seconds"] = round(float(seconds), 3)
            self.analysis_seconds[key] = float(obj["seconds"])
        self._append(obj)
        self.analysis[key] = value
