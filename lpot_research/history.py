"""Trial records: appended to history.jsonl as each trial finishes (flushed and fsynced), so a
killed run loses no finished trial and can be resumed from the file."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lpot_research.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class TrialRecord:
    trial: int  # 1-based count of evaluated configs in this run (across resumes)
    config_id: str
    config: dict[str, Any]
    status: str  # "ok" | "failed"
    accuracy: float | None = None
    objective: float | None = None
    passed: bool = False
    metrics: dict[str, float] = field(default_factory=dict)  # latency_ms, size_bytes, footprint_bytes
    note: str = ""
    error: str | None = None
    duration_s: float = 0.0
    elapsed_s: float = 0.0  # wall clock since the run started (summed across resumes)
    kind: str = "trial"

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def metric_ratio(rec: TrialRecord | None, baseline: dict[str, Any], key: str) -> float | None:
    """A trial's measurement relative to the FP32 baseline's (e.g. the latency ratio); None when
    either is missing."""
    if rec is None or key not in rec.metrics or not baseline.get(key):
        return None
    return rec.metrics[key] / baseline[key]


class History:
    """The append-only log of a run. The first line names the run (`run_key`) so a resume into a
    directory of a different run is refused rather than silently mixing results."""

    FILENAME = "history.jsonl"

    def __init__(self, run_dir: str | os.PathLike, run_key: str) -> None:
        self.path = Path(run_dir) / self.FILENAME
        self.run_key = run_key
        self.baseline: dict[str, Any] | None = None
        self.trials: list[TrialRecord] = []
        self._has_header = False
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        # Only newline-terminated lines were written completely; a kill mid-write leaves an
        # unterminated tail, which is dropped (and cut from the file so new lines start clean).
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) < len(data):
            log.warning("history: dropping a partially written last line of %s", self.path)
            with open(self.path, "r+b") as f:
                f.truncate(len(complete))
        for number, raw in enumerate(complete.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{self.path} line {number} is corrupt ({e}); fix or remove that line") from None
            kind = rec.get("kind")
            if kind == "run":
                self._has_header = True
                if rec["run_key"] != self.run_key:
                    raise ConfigError(
                        f"cannot resume from {self.path.parent}: it holds a different run (run_key "
                        f"{rec['run_key']} != {self.run_key}); the framework, model, quantization, "
                        "criterion, objective, benchmark, strategy and seed must match"
                    )
            elif kind == "baseline":
                self.baseline = rec
            elif kind == "trial":
                rec.pop("kind")
                self.trials.append(TrialRecord(**rec))

    def _append(self, line: str) -> None:
        if not self._has_header:  # a new (or empty) history: its first line names the run
            self.path.parent.mkdir(parents=True, exist_ok=True)
            line = json.dumps({"kind": "run", "run_key": self.run_key}) + "\n" + line
            self._has_header = True
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def set_baseline(self, baseline: dict[str, Any]) -> None:
        self.baseline = baseline
        self._append(json.dumps({"kind": "baseline", **baseline}, sort_keys=True))

    def add(self, rec: TrialRecord) -> None:
        self.trials.append(rec)
        self._append(rec.to_json())

    def by_id(self) -> dict[str, TrialRecord]:
        return {t.config_id: t for t in self.trials}
