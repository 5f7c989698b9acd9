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


class History:
    """The append-only log of a run. The first line names the run (`run_key`) so a resume into a
    directory of a different run is refused rather than silently mixing results."""

    FILENAME = "history.jsonl"

    def __init__(self, run_dir: str | os.PathLike, run_key: str) -> None:
        self.path = Path(run_dir) / self.FILENAME
        self.run_key = run_key
        self.baseline: dict[str, Any] | None = None
        self.trials: list[TrialRecord] = []
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        good = 0
        with open(self.path, "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        for raw in lines:
            if not raw.strip():
                good += len(raw) + 1
                continue
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError:
                log.warning("history: dropping a partially written last line in %s", self.path)
                break
            kind = rec.get("kind")
            if kind == "run":
                if rec["run_key"] != self.run_key:
                    raise ConfigError(
                        f"cannot resume from {self.path.parent}: it holds a different run (run_key "
                        f"{rec['run_key']} != {self.run_key}); the framework, model, quantization, "
                        "criterion, objective, strategy and seed must match"
                    )
            elif kind == "baseline":
                self.baseline = rec
            elif kind == "trial":
                rec.pop("kind")
                self.trials.append(TrialRecord(**rec))
            good += len(raw) + 1
        if good < len(data):  # cut a torn tail so new lines start clean
            with open(self.path, "r+b") as f:
                f.truncate(min(good, len(data)))

    def _append(self, line: str) -> None:
        if not self.path.exists():  # a new run: its first line names it
            self.path.parent.mkdir(parents=True, exist_ok=True)
            line = json.dumps({"kind": "run", "run_key": self.run_key}) + "\n" + line
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
