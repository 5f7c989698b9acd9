"""Looking inside models without a trial: per-op outputs (the mse strategy, TensorBoard) and how far a
model's output is from FP32's (basic's per-op sensitivity), on one fixed batch of calibration data.

Results that a resumed run would otherwise recompute are kept in the history as analysis records.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from lpot_research.core.batches import batch_len, take
from lpot_research.quant.space import OpChoice, TuneConfig
from lpot_research.run.history import OP_ERRORS, SENSITIVITY, History, analysis_key

log = logging.getLogger("lpot_research")

PROBE_SAMPLES = 32
# the probe runs through a model in batches of this size: ONNX Runtime runs PP-OCRv4's recognizer 1.6x
# faster per sample in batches of 8 than in one batch of 32 (its activations then stay in cache)
PROBE_BATCH = 8


def _flat(outputs: Any) -> np.ndarray:
    """A model's outputs (an array, a tensor, or a tuple/list/dict of them) as one float64 vector."""
    from lpot_research.adaptors.base import to_numpy

    if isinstance(outputs, dict):
        outputs = list(outputs.values())
    if isinstance(outputs, tuple | list):
        return np.concatenate([_flat(o) for o in outputs]) if outputs else np.zeros(0)
    if hasattr(outputs, "dequantize") and getattr(outputs, "is_quantized", False):
        outputs = outputs.dequantize()
    return np.asarray(to_numpy(outputs), dtype=np.float64).ravel()


class ProgressMeter:
    """A progress line in the log for work that is not trials (ops done / total, elapsed, ETA): after
    the first step, then at most every `every` seconds, and at the end."""

    def __init__(self, what: str, total: int, every: float = 10.0) -> None:
        self.what, self.total, self.every, self.done = what, total, every, 0
        self.t0 = self.last = time.perf_counter()

    def step(self) -> None:
        self.done += 1
        now = time.perf_counter()
        if self.done == 1 or self.done >= self.total or now - self.last >= self.every:
            self.last = now
            elapsed = now - self.t0
            eta = f", ETA {elapsed / self.done * (self.total - self.done):.0f} s" if self.done < self.total else ""
            log.info("%s: %d/%d ops, %.1f s elapsed%s", self.what, self.done, self.total, elapsed, eta)


def normalized_mse(ref: np.ndarray, got: np.ndarray) -> float:
    return float(np.mean((ref - got) ** 2) / (np.mean(ref ** 2) + 1e-12))


class Inspector:
    """`history` keeps what was computed (None in a worker process). `spread(base, names)`, when set (by a
    tuner with parallel workers), computes `distances` on the workers."""

    def __init__(self, adaptor: Any, model: Any, calib: Iterable[Any], example_inputs: Any,
                 history: History | None) -> None:
        self.adaptor, self.model, self.calib, self.example_inputs = adaptor, model, calib, example_inputs
        self.history = history
        self.spread: Callable[[TuneConfig, list[str]], dict[str, float]] | None = None
        self._probes: dict[int, Any] = {}
        self._reference: dict[int, np.ndarray] = {}

    def probe(self, sampling_size: int) -> Any:
        """The fixed calibration batch (at most PROBE_SAMPLES samples) outputs are compared on."""
        if sampling_size not in self._probes:
            self._probes[sampling_size] = self.adaptor.take_inputs(self.calib, min(sampling_size, PROBE_SAMPLES),
                                                                   "calibration")
        return self._probes[sampling_size]

    def quantize(self, cfg: TuneConfig) -> Any:
        return self.adaptor.quantize(self.model, cfg, self.calib, self.example_inputs)

    def fp32_build(self, cfg: TuneConfig) -> Any:
        """`cfg`'s graph with every op in FP32: the reference adaptors define for inspection (the same
        rewrites, e.g. fusions, with no quantization)."""
        return self.quantize(cfg.with_ops({n: OpChoice("fp32") for n, _ in cfg.ops}))

    # ------------------------------------------------------------------ per-op outputs
    def op_errors(self, cfg: TuneConfig) -> dict[str, float]:
        """Normalized MSE of each quantized op's output in `cfg` against the same op in an all-FP32 build
        of the same graph, on the probe batch (the mse strategy's ranking)."""
        key = analysis_key(OP_ERRORS, cfg.id)
        if key in self.history.analysis:
            return dict(self.history.analysis[key])
        t0 = time.perf_counter()
        names = [n for n, c in cfg.ops if c.quantized]
        try:
            inputs = self.probe(cfg.sampling_size)
            ref = self.adaptor.inspect(self.fp32_build(cfg), inputs, names)
            got = self.adaptor.inspect(self.quantize(cfg), inputs, names)
        except Exception as e:  # e.g. the config does not quantize: no ranking rather than no run
            log.warning("per-op output inspection failed (%s: %s); falling back in model order", type(e).__name__, e)
            return {}
        errors = {n: normalized_mse(np.asarray(ref[n], np.float64).ravel(), np.asarray(got[n], np.float64).ravel())
                  for n in names}
        self.history.add_analysis(key, errors, time.perf_counter() - t0)
        top = sorted(errors.items(), key=lambda kv: -kv[1])[:5]
        log.info("per-op output error vs FP32 (%.1f s), largest: %s", time.perf_counter() - t0,
                 ", ".join(f"{n} {e:.2e}" for n, e in top))
        return errors

    def outputs(self, model: Any, ops: list[str], sampling_size: int) -> dict[str, Any]:
        """Per-op outputs of `model` (None = the FP32 reference build) on the probe batch."""
        return self.adaptor.inspect(model, self.probe(sampling_size), ops)

    # ------------------------------------------------------------------ per-op sensitivity (basic's stage 2)
    def distance(self, model: Any, sampling_size: int) -> float:
        """Normalized MSE of `model`'s output against the FP32 model's, on the probe batch."""
        if sampling_size not in self._reference:
            self._reference[sampling_size] = self._flat_outputs(self.model, sampling_size)
        return normalized_mse(self._reference[sampling_size], self._flat_outputs(model, sampling_size))

    def _flat_outputs(self, model: Any, sampling_size: int) -> np.ndarray:
        probe = self.probe(sampling_size)
        n = batch_len(probe)
        return np.concatenate([_flat(self.adaptor.predict(model, take(probe, np.arange(i, min(i + PROBE_BATCH, n)))))
                               for i in range(0, n, PROBE_BATCH)])

    def distances(self, base: TuneConfig, names: list[str]) -> dict[str, float]:
        """For each op of `names`: `distance` of `base` with only that op quantized (inf: it does not).
        Progress goes to the log and, on a terminal, a bar."""
        from lpot_research.run.evaluation import progress

        fp32 = {n: OpChoice("fp32") for n, _ in base.ops}
        meter = ProgressMeter("per-op sensitivity", len(names))
        out = {}
        for n in progress(names, "sensitivity", len(names), unit="op"):
            alone = base.with_ops({m: c for m, c in fp32.items() if m != n})
            try:
                out[n] = self.distance(self.quantize(alone), base.sampling_size)
            except Exception as e:  # an op that does not quantize: it falls back first
                log.debug("sensitivity of %s: %s", n, e)
                out[n] = float("inf")
            meter.step()
        return out

    def sensitivity(self, base: TuneConfig, ops: list[str]) -> dict[str, float]:
        """How much each op, quantized alone as `base` quantizes it (every other op FP32), moves the
        model's output away from FP32's: the normalized MSE on the probe batch, as a share of the sum
        over `ops` (an op that does not quantize: inf). One small quantization and one probe batch per
        op instead of a trial each; kept in the history.

        Why alone: quantization error spread over many ops (PP-OCRv4's first stage: no single conv's
        fallback recovers it, and the output error each fallback removes ranked those convs last) shows
        op by op when each is the only one quantized (they then rank first); on MiniLM both views agree
        (the FFN output projections first)."""
        key = analysis_key(SENSITIVITY, base.id)
        known = dict(self.history.analysis.get(key) or {})
        missing = [n for n in ops if n not in known]
        if missing:
            t0 = time.perf_counter()
            log.info("per-op sensitivity: %d op(s) to quantize one at a time (%d known)", len(missing), len(known))
            known.update(self.spread(base, missing) if self.spread is not None else self.distances(base, missing))
            self.history.add_analysis(key, known, self.history.analysis_seconds.get(key, 0.0)
                                      + time.perf_counter() - t0)
            total = sum(v for v in known.values() if v != float("inf")) or 1.0
            top = sorted(known.items(), key=lambda kv: -kv[1])[:5]
            log.info("per-op sensitivity (output error vs FP32 with the op alone quantized, on %d probe samples; "
                     "%d ops in %.1f s), largest: %s", PROBE_SAMPLES, len(missing), time.perf_counter() - t0,
                     ", ".join(f"{n} {v / total:.1%}" for n, v in top))
        total = sum(v for n, v in known.items() if n in ops and v != float("inf")) or 1.0
        return {n: known[n] / total for n in ops}
