"""A fake framework with a known accuracy landscape, for testing strategy and tuner logic fast.

The "model" is just the TuneConfig. Accuracy = 1.0 minus a per-op penalty for each INT8 op (larger for
minmax than for kl calibration, scaled per op), minus a small bf16 penalty; latency is a sum of per-op
costs (int8 < bf16 < fp32). Everything is deterministic, so strategy behaviour can be predicted exactly.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from lpot_research.adaptors.base import Adaptor, batch_len, batches
from lpot_research.measure.benchmark import Latency
from lpot_research.measure.op_costs import OpCosts
from lpot_research.models import ModelBundle
from lpot_research.quant.space import OpCapability, TuneConfig

COST = {"int8": 1.0, "bf16": 2.0, "fp32": 4.0}
INDEX_OFFSET = 10  # per-sample evaluation inputs are sample indices + this (probes are 0, plain evaluation 1)


def indexed_loader(n: int, batch: int = 100) -> list[tuple[np.ndarray, np.ndarray]]:
    """Evaluation batches whose inputs are sample indices, for `FakeAdaptor(per_sample=n)`."""
    idx = np.arange(n, dtype=np.float64) + INDEX_OFFSET
    return [(idx[i:i + batch], np.zeros(len(idx[i:i + batch]))) for i in range(0, n, batch)]


class FakeModel:
    def __init__(self, config: TuneConfig | None) -> None:
        self.config = config


class FakeScore:
    """The fake's metric: the model predicts its accuracy for every sample; the metric is their mean
    (a per-sample mean, so early rejection and ranking subsets apply as with top-k)."""

    higher_is_better = True
    sample_range = (0.0, 1.0)

    def __init__(self) -> None:
        self.reset()

    def sample_scores(self, predictions, labels):
        return np.asarray(predictions, dtype=np.float64)

    def reset(self):
        self.values = []

    def update(self, predictions, labels):
        self.values += list(self.sample_scores(predictions, labels))

    def result(self):
        return float(np.mean(self.values)) if self.values else float("nan")


class FakeAdaptor(Adaptor):
    name = "fake"

    def __init__(self, ops: int = 4, penalties: list[float] | None = None, bf16_penalty: float = 0.001,
                 kl_factor: float = 0.5, sleep: float = 0.0, fail_ops: Iterable[str] = (), threads: Any = None,
                 sym_penalty: float = 0.0, names: list[str] | None = None, eval_log: str | None = None,
                 save_sleep: float = 0.0, sleep_spread: int = 1, per_sample: int = 0, crash_ops: Iterable[str] = (),
                 crash_in: str = "quantize", crash_dtype: str = "int8", crash_signal: int = 11,
                 probe_penalties: list[float] | None = None, pair_penalties: Iterable[Any] = (),
                 int8_ms: dict[str, float] | None = None, fp32_penalties: dict[str, float] | None = None,
                 recipe_gains: dict[str, float] | None = None) -> None:
        # `names`: op names in model order (e.g. ones that do not sort in model order)
        self.ops = list(names) if names is not None else [f"op{i}" for i in range(ops)]
        ops = len(self.ops)
        self._eval_log, self._save_sleep = eval_log, save_sleep  # private: not part of the run key
        self.penalties = list(penalties) if penalties is not None else [0.01 * (i + 1) for i in range(ops)]
        self.bf16_penalty, self.kl_factor, self.sleep = bf16_penalty, kl_factor, sleep
        # quantize sleeps sleep x (1..sleep_spread), by config: trials finish out of order
        self.sleep_spread = int(sleep_spread)
        self.sym_penalty = sym_penalty
        # what per-op output inspection sees of each op (default: its accuracy penalty): a probe batch
        # that misjudges the ops makes basic's sensitivity order imperfect
        self.probe_penalties = list(probe_penalties) if probe_penalties is not None else self.penalties
        # [(a, b, p)]: p more accuracy lost when ops a and b are both INT8 (error that compounds across
        # ops: quantizing either one alone, as basic's sensitivity does, does not show it)
        self.pair_penalties = [(str(a), str(b), float(pp)) for a, b, pp in pair_penalties]
        self.fail_ops = set(fail_ops)
        # a config giving one of `crash_ops` the dtype `crash_dtype` kills its process with `crash_signal`
        # in `crash_in` (quantize | evaluate), as a kernel's segfault or the OOM killer would
        self.crash_ops, self.crash_in, self.crash_signal = set(crash_ops), crash_in, int(crash_signal)
        self.crash_dtype = crash_dtype
        # per_sample=N: evaluation inputs carry sample indices (see `indexed_loader`) and each sample is
        # right or wrong: sample i has a difficulty u_i in [0, 1) and a config gets it right iff u_i < its
        # accuracy, so the hard samples are wrong for every weak config (as on real models): a stop taken
        # on the running mean of the hardest samples first would reject configs that pass on the whole set
        self.per_sample = int(per_sample)
        self.quantize_calls: list[str] = []
        # {op: ms}: ops whose INT8 latency differs from COST["int8"] (e.g. slower than FP32's, as a first
        # conv of one input channel is on ONNX Runtime); given, the fake has a profiler: `op_costs`
        self.int8_ms = {str(k): float(v) for k, v in (int8_ms or {}).items()}
        self.profiler = "fake per-op costs" if self.int8_ms else ""
        # {op: p}: accuracy lost when the op is FP32 in a quantized model (fallback does not always help:
        # on PP-OCRv4 more FP32 convs sometimes lose a sample or two)
        self.fp32_penalties = {str(k): float(v) for k, v in (fp32_penalties or {}).items()}
        # {"smooth_quant=0.5": g, "bias_correction": g, ...}: the share of each INT8 op's accuracy loss a recipe
        # removes when on (recipes add up; the fake supports the recipes named here)
        self.recipe_gains = {str(k): float(v) for k, v in (recipe_gains or {}).items()}
        self.recipes = tuple(dict.fromkeys(k.split("=")[0] for k in self.recipe_gains))

    def capabilities(self, model: Any, approach: str, example_inputs: Any) -> list[OpCapability]:
        w = {"dtype": ("int8",), "scheme": ("sym", "asym"), "granularity": ("per_channel", "per_tensor"),
             "algorithm": ("minmax",)}
        a = {"dtype": ("uint8",), "scheme": ("asym", "sym"), "granularity": ("per_tensor",),
             "algorithm": ("minmax", "kl")}
        defaults = {"weight": {"scheme": ("sym",), "granularity": ("per_channel",)}}
        return [OpCapability(n, "FakeOp", w, a, ("bf16", "fp32"), defaults=defaults) for n in self.ops]

    def accuracy(self, cfg: TuneConfig | None) -> float:
        if cfg is None:
            return 1.0
        acc = 1.0
        kept = max(0.0, 1.0 - sum(self.recipe_gains.get(n if v is True else f"{n}={v}", 0.0) for n, v in cfg.recipes))
        for (_, c), p in zip(cfg.ops, self.penalties, strict=True):
            if c.quantized:
                f = self.kl_factor if c.activation and c.activation.algorithm == "kl" else 1.0
                acc -= kept * (p * f + (self.sym_penalty if c.activation and c.activation.scheme == "sym" else 0.0))
            elif c.dtype == "bf16":
                acc -= self.bf16_penalty
        if any(c.quantized for _, c in cfg.ops):
            acc -= sum(p for n, p in self.fp32_penalties.items() if cfg.op(n).dtype == "fp32")
        for a, b, p in self.pair_penalties:
            acc -= p if cfg.op(a).quantized and cfg.op(b).quantized else 0.0
        return round(acc, 10)

    def quantize(self, model: Any, config: TuneConfig, calib_dataloader: Any, example_inputs: Any) -> FakeModel:
        self.quantize_calls.append(config.id)
        if self.sleep:
            time.sleep(self.sleep * (1 + int(config.id[:4], 16) % max(1, self.sleep_spread)))
        self._crash(config, "quantize")
        bad = [n for n, c in config.ops if n in self.fail_ops and c.quantized]
        if bad:
            raise RuntimeError(f"fake quantization failure at {bad[0]}")
        return FakeModel(config)

    def _crash(self, config: TuneConfig | None, phase: str) -> None:
        if config is not None and phase == self.crash_in and any(n in self.crash_ops and c.dtype == self.crash_dtype
                                                                 for n, c in config.ops):
            os.kill(os.getpid(), self.crash_signal)

    def take_inputs(self, loader: Any, n: int, what: str = "benchmark") -> Any:
        return np.concatenate([x for x, _ in batches(loader, what)])[:n]

    def predict(self, model: FakeModel, inputs: Any) -> Any:
        # evaluation batches: FakeBundle's evaluation data are ones (probes are zeros), 100 per batch (the
        # saved best model's check runs on the single benchmark sample, which is not an evaluation)
        if self._eval_log and np.all(np.asarray(inputs) == 1) and batch_len(inputs) > 1:
            with open(self._eval_log, "a") as f:
                f.write(f"{model.config.id if model.config else 'fp32'}\n")
        self._crash(model.config, "evaluate")
        acc = self.accuracy(model.config)
        x = np.asarray(inputs)
        if self.per_sample and x.ndim == 1 and x.size and x.min() >= INDEX_OFFSET:
            u = np.random.default_rng(0).random(self.per_sample)  # the samples' difficulties
            return (u[x.astype(int) - INDEX_OFFSET] < acc).astype(np.float64)
        return np.full(batch_len(inputs), acc)

    def fingerprint(self, model: FakeModel) -> str:
        return f"fake:{','.join(self.ops)}"

    def runner(self, model: Any, inputs: Any) -> Any:
        return lambda: None

    def latency_ms(self, model: FakeModel, inputs: Any, warmup: int, iterations: int) -> float:
        if model.config is None:
            return COST["fp32"] * len(self.ops)
        return sum(self.int8_ms.get(n, COST["int8"]) if c.quantized else COST[c.dtype] for n, c in model.config.ops)

    def op_costs(self, fp32_model: FakeModel, int8_model: FakeModel, inputs: Any, op_names: list[str],
                 runs: int) -> OpCosts:
        assert int8_model.config is not None and all(c.quantized for _, c in int8_model.config.ops)
        return OpCosts(self.profiler, runs, {n: COST["fp32"] for n in op_names},
                       {n: self.int8_ms.get(n, COST["int8"]) for n in op_names})

    def measure_latency(self, model: FakeModel, inputs: Any, bench: Any, reference: Any = None) -> Latency:
        """Deterministic: the per-op cost sum, against the all-FP32 cost."""
        lat = self.latency_ms(model, inputs, 0, 0)
        if reference is None:
            return Latency(lat, 0.0, 1)
        ref = self.latency_ms(reference, inputs, 0, 0)
        return Latency(lat, 0.0, 1, ref, lat / ref)

    def size_bytes(self, model: FakeModel) -> int:
        return int(100 * self.latency_ms(model, None, 0, 0))

    def footprint_bytes(self, model: FakeModel, inputs: Any) -> int:
        return self.size_bytes(model) * 2

    def inspect(self, model: FakeModel, inputs: Any, op_names: list[str]) -> dict[str, Any]:
        """Per-op outputs whose error vs FP32 grows with the op's accuracy penalty when it is INT8."""
        import numpy as np

        out = {}
        for n in op_names:
            c = model.config.op(n)
            out[n] = np.ones(4) + (self.probe_penalties[self.ops.index(n)] if c.quantized else 0.0)
        return out

    def save(self, model: FakeModel, path: Path, example_inputs: Any) -> Path:
        if self._save_sleep:
            time.sleep(self._save_sleep)
        out = Path(path).with_suffix(".txt")
        out.write_text(model.config.id if model.config else "fp32")
        return out


class FakeBundle:
    """Model spec for the fake framework (used through Hydra in subprocess tests)."""

    def __init__(self, name: str = "fake_model") -> None:
        self.name = name

    def load(self, framework: str = "fake") -> ModelBundle:
        import numpy as np

        calib = [(np.zeros(100), np.zeros(100))]
        evaluation = [(np.ones(100), np.zeros(100))]  # ones: the fake logs evaluations apart from probes
        return ModelBundle(self.name, FakeModel(None), calib, evaluation, FakeScore(), calib[0][0], 1)
