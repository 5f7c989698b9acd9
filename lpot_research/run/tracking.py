"""Experiment trackers: the tuner reports the baseline, every trial and the summary to one.

`Tracker` is the interface (and does nothing); `WandbTracker` makes one Weights & Biases run per
tuning job. Per trial it logs accuracy, objective, latency and size ratios, pass/fail and the
best-so-far values against the step metric `trial`, so runs of different strategies overlay as
tuning curves. Without W&B credentials it runs offline (`wandb sync <run dir>/wandb/offline-run-*`
uploads it later). The run is finished in every case, with a non-zero exit code when the job failed.
"""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any

from lpot_research.run.history import metric_ratio
from lpot_research.run.summary import Summary

log = logging.getLogger("lpot_research")


class Tracker:
    """What the tuner calls. Subclass and override any of these to send results elsewhere."""

    def start(self, names: dict[str, str], config: dict[str, Any], run_dir: Path) -> None:
        """Once, before the baseline: the job's names (strategy/framework/model) and its config."""

    def log_baseline(self, baseline: dict[str, Any]) -> None:
        """The FP32 baseline's accuracy and measurements."""

    def log_trial(self, trial: dict[str, Any]) -> None:
        """One evaluated trial (see `trial_row` for the keys)."""

    def log_summary(self, summary: Summary) -> None:
        """The run's summary (lpot_research.run.summary.Summary; `to_dict()` is summary.json's content)."""

    def finish(self, failed: bool = False) -> None:
        """Always called last, also when the job raised."""


def has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


class WandbTracker(Tracker):
    """One W&B run per job.

    project/entity/tags: as in `wandb.init`. group: runs of one sweep share it (the Hydra entry sets
    it to the sweep directory's name). name: defaults to "strategy/framework/model". mode: online,
    offline or disabled; None = $WANDB_MODE if set, else online when credentials exist, else offline.
    The W&B files go under the job's own run directory, so parallel jobs never share them.
    """

    requires = ("wandb",)  # the wandb extra (imported when the run starts)

    def __init__(self, project: str = "lpot-research", entity: str | None = None, group: str | None = None,
                 name: str | None = None, tags: list[str] | None = None, mode: str | None = None) -> None:
        self.project, self.entity, self.group, self.name = project, entity, group, name
        self.tags = list(tags or [])
        self.mode = mode
        self.run: Any = None

    def resolved_mode(self) -> str:
        if self.mode:
            return self.mode
        if os.environ.get("WANDB_MODE"):
            return os.environ["WANDB_MODE"]
        return "online" if has_wandb_credentials() else "offline"

    def start(self, names: dict[str, str], config: dict[str, Any], run_dir: Path) -> None:
        import wandb

        mode = self.resolved_mode()
        name = self.name or "/".join(names[k] for k in ("strategy", "framework", "model") if k in names)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=self.project, entity=self.entity, group=self.group, name=name,
                              tags=[*self.tags, *names.values()], config=config, dir=str(run_dir), mode=mode,
                              reinit="create_new", settings=wandb.Settings(silent=True))
        self.run.define_metric("trial")
        self.run.define_metric("*", step_metric="trial")
        log.info("W&B run %s (%s mode) in %s", self.run.id, mode, run_dir / "wandb")

    def log_baseline(self, baseline: dict[str, Any]) -> None:
        self.run.summary.update({f"baseline/{k}": v for k, v in baseline.items()})

    def log_trial(self, trial: dict[str, Any]) -> None:
        self.run.log({k: v for k, v in trial.items() if v is not None})

    def log_summary(self, summary: Summary) -> None:
        flat = {"met_criterion": summary.met_criterion, "trials": summary.trials,
                "failed_trials": summary.failed_trials, "stop_reason": summary.stop_reason,
                "elapsed_s": summary.elapsed_s, "faster_than_fp32": summary.faster_than_fp32}
        for k, v in (summary.best.to_dict() if summary.best else {}).items():
            if isinstance(v, int | float | str | bool) or v is None:
                flat[f"best/{k}"] = v
        self.run.summary.update(flat)

    def finish(self, failed: bool = False) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1 if failed else 0)
            self.run = None


def trial_row(rec: Any, best: Any, baseline: dict[str, Any]) -> dict[str, Any]:
    """The values logged for one trial: its own, and the best-so-far (None until one succeeds)."""
    return {
        "trial": rec.trial,
        "accuracy": rec.accuracy,
        "objective": rec.objective,
        "passed": int(rec.passed),
        "failed": int(not rec.ok),
        "latency_ms": rec.metrics.get("latency_ms"),
        "latency_ratio": metric_ratio(rec, baseline, "latency_ms"),
        "size_ratio": metric_ratio(rec, baseline, "size_bytes"),
        "elapsed_s": rec.elapsed_s,
        "best/accuracy": best.accuracy if best else None,
        "best/objective": best.objective if best else None,
        "best/passed": int(best.passed) if best else None,
        "best/latency_ratio": metric_ratio(best, baseline, "latency_ms"),
    }


class TensorBoardDump:
    """`tensorboard: true`: histograms of every op's output (on a fixed calibration batch) for the FP32
    model at step 0 and for each evaluated trial at its trial number, plus accuracy scalars, written
    to <run dir>/tensorboard. View with `tensorboard --logdir <run dir>/tensorboard`."""

    def __init__(self, logdir: Path) -> None:
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(logdir=str(logdir), flush_secs=5)

    def add(self, step: int, outputs: dict[str, Any], accuracy: float | None) -> None:
        import numpy as np

        for name, value in outputs.items():
            v = np.asarray(value, dtype=np.float32).ravel()
            if v.size and np.isfinite(v).all():
                self.writer.add_histogram(f"op_output/{name}", v, global_step=step)
        if accuracy is not None:
            self.writer.add_scalar("accuracy", accuracy, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
