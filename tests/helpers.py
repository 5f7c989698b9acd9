"""Run the real tuner on the fake framework, in-process."""

from __future__ import annotations

from typing import Any

import numpy as np

from lpot_research import tune
from lpot_research.metrics import TopK
from tests.fakes import FakeAdaptor, FakeModel

LOADER = [(np.zeros(100), np.zeros(100))]  # one batch of 100 samples (the default sampling_size)


def run_fake(tmp_path: Any, adaptor: FakeAdaptor | None = None, strategy: Any = "basic", config: dict | None = None,
             **kwargs: Any):
    adaptor = adaptor or FakeAdaptor()
    cfg = {"accuracy_criterion": {"kind": "relative", "tolerance": 0.01}, "exit_policy": {"timeout": 0,
                                                                                          "max_trials": 100}}
    for k, v in (config or {}).items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    return tune(FakeModel(None), LOADER, LOADER, TopK(1), config=cfg, framework=adaptor, strategy=strategy,
                output_dir=tmp_path, example_inputs=[0], **kwargs)


def history_notes(result) -> list[str]:
    import json

    lines = [json.loads(x) for x in (result.output_dir / "history.jsonl").read_text().splitlines()]
    return [r["note"] for r in lines if r.get("kind") == "trial"]
