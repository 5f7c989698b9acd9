"""Glue between Hydra and the API: config-choice checks, resolvers, and one job's run."""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("lpot_research")

PLURAL = {"strategy": "strategies", "framework": "frameworks", "model": "models",
          "accuracy_criterion": "accuracy criteria", "objective": "objectives", "exit_policy": "exit policies",
          "tracker": "trackers", "metric": "metrics"}


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("lpot_run_dir"):
        # hydra.run.dir: the `resume` dir when given, else a fresh timestamped dir
        OmegaConf.register_new_resolver("lpot_run_dir", lambda resume, default: resume or default)


def group_choices(conf_dir: Path, group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def check_choices(args: list[str], conf_dir: Path) -> str | None:
    """The first unknown config-group choice among command-line overrides, as one line naming the
    valid choices (Hydra's own message spans a dozen lines); None when all are known."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in args if not a.startswith("-") and "=" in a]
    if any(a.split("=", 1)[0].lstrip("+~").startswith("hydra.searchpath") for a in overrides):
        return None  # extra config dirs may define more choices
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # let Hydra report syntax errors itself
        return None
    for o in parsed:
        group = o.key_or_group
        if group not in PLURAL or o.package or o.is_delete():
            continue
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        valid = group_choices(conf_dir, group)
        for v in values:
            if v not in valid:
                return f"error: unknown {group} {v!r}; valid {PLURAL[group]}: {', '.join(valid)}"
    return None


def run_job(cfg: DictConfig) -> float:
    """One Hydra job: instantiate each component once, tune, return the best objective value when
    the criterion is met (inf otherwise) so Hydra sweepers can minimize it."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from hydra.utils import instantiate

    from lpot_research.api import tune
    from lpot_research.errors import LpotError

    logging.getLogger("lpot_research").setLevel(os.environ.get("LOGLEVEL", "INFO").upper())
    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    try:
        adaptor = instantiate(cfg.framework)
        bundle = instantiate(cfg.model).load(framework=adaptor.name)
        strategy = instantiate(cfg.strategy)
        criterion = instantiate(cfg.accuracy_criterion)
        objective = instantiate(cfg.objective)
        exit_policy = instantiate(cfg.exit_policy)
        tracker = instantiate(cfg.tracker)
        metric = instantiate(cfg.metric) if cfg.get("metric") is not None else bundle.metric
        if getattr(tracker, "group", "") is None and hc.mode == RunMode.MULTIRUN:
            tracker.group = "sweep-" + "_".join(Path(hc.sweep.dir).parts[-2:])  # one sweep's runs share a group
        tuning = OmegaConf.to_container(cfg, resolve=True)
        config = {k: tuning[k] for k in ("quantization", "random_seed", "benchmark", "threads", "tensorboard")
                  if k in tuning}
        result = tune(
            bundle.model, bundle.calib_dataloader, bundle.eval_dataloader, metric, config=config,
            framework=adaptor, strategy=strategy, accuracy_criterion=criterion, objective=objective,
            exit_policy=exit_policy, output_dir=out, example_inputs=bundle.example_inputs, model_name=bundle.name,
            bench_batch_size=bundle.bench_batch_size, tracker=tracker,
        )
    except LpotError as e:
        log.error("%s", e)
        sys.exit(f"error: {e}")
    s = result.summary
    best = s["best"]
    return float(best["objective"]) if s["met_criterion"] and best and best["objective"] is not None else math.inf


def print_and_exit(msg: str, code: int = 2) -> Any:
    print(msg, file=sys.stderr)
    sys.exit(code)
