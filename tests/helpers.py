"""Run the real tuner on the fake framework, in-process."""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from lpot_research import tune
from lpot_research.run.history import History
from tests.fakes import FakeAdaptor, FakeModel, FakeScore

LOADER = [(np.zeros(100), np.zeros(100))]  # one batch of 100 samples (the default sampling_size)


def run_fake(tmp_path: Any, adaptor: FakeAdaptor | None = None, strategy: Any = "basic", config: dict | None = None,
             eval_loader: Any = LOADER, **kwargs: Any):
    """The real tuner on the fake framework: relative 1%, stop at the first pass, 100 trials at most
    (`config` overrides, merged per group)."""
    adaptor = adaptor or FakeAdaptor()
    cfg = {"accuracy_criterion": {"kind": "relative", "tolerance": 0.01}, "exit_policy": {"timeout": 0,
                                                                                          "max_trials": 100}}
    for k, v in (config or {}).items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    kwargs.setdefault("resume", History.exists(tmp_path))
    return tune(FakeModel(None), LOADER, eval_loader, FakeScore(), config=cfg, framework=adaptor, strategy=strategy,
                output_dir=tmp_path, example_inputs=np.zeros(1), **kwargs)


def trials(run_dir) -> list:
    """The trial records of a run dir, read through History (never by hand)."""
    return History.read(getattr(run_dir, "output_dir", run_dir)).trials


def history_so_far(run_dir) -> History | None:
    """The record of a run that may still be running, or None before its first line (the run header) is
    complete. Anything else that stops the read (a corrupt line, a trial out of order) fails the caller: only
    a history not yet begun counts as empty. A read-only read drops a line still being written."""
    path = Path(run_dir) / History.FILENAME
    if not path.exists() or b"\n" not in path.read_bytes():  # lines are only appended: a later read sees it too
        return None
    return History.read(run_dir)


def history_notes(result) -> list[str]:
    return [t.note for t in trials(result)]


def env_without_isa_cap() -> dict[str, str]:
    """os.environ without LPOT_CPU_ISA and the framework switches it sets (a child process then sees the
    native CPU class, or the cap it is given)."""
    from lpot_research.core.cpu import ISA_CAPS, ISA_ENV

    drop = {ISA_ENV, "DNNL_MAX_CPU_ISA", *(k for _, switches in ISA_CAPS.values() for k in switches)}
    return {k: v for k, v in os.environ.items() if k not in drop}



def run_together(commands: dict[str, dict[str, Any]], **common: Any) -> dict[str, subprocess.CompletedProcess]:
    """subprocess.run of each named command ({name: run's keyword arguments, args included}) at the same time,
    each with `common` keywords too (capture_output, text, timeout, ...). Two single-threaded tuning runs share
    the machine's two cores, so a test that checks one job on both CPU classes waits once, not twice."""
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        futures = {name: pool.submit(subprocess.run, **{**common, **kw}) for name, kw in commands.items()}
        return {name: f.result() for name, f in futures.items()}
