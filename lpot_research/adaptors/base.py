"""The framework adaptor template. The base owns the flow every back end shares (the approach and op-name
checks, calibration through one cache, the check after quantizing that fallback ops stayed float,
evaluation, timing, the warmed-up footprint, saving, fingerprints); each back end fills the hooks
(`_quantize`, `_stayed_float`, `_footprint_run`, `_save`, `_content`, ...). Constructors only store
arguments."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import logging
import statistics
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lpot_research.adaptors.calibration_cache import CalibrationCache
from lpot_research.core.batches import batch_len, batches, limited_batches
from lpot_research.measure.benchmark import Benchmark, Latency, measure
from lpot_research.quant.space import OpCapability, TuneConfig

__all__ = ["Adaptor", "CalibrationCache", "FallbackError", "RangeRule", "as_tuple", "batch_len", "batches",
           "limited_batches", "numpy_inputs", "quiet", "take_numpy_inputs", "to_numpy"]


class FallbackError(RuntimeError):
    """A quantized model does not compute an op the way its configuration says (e.g. an op configured
    FP32 came out INT8): the trial fails with this message instead of scoring the wrong model."""


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence a framework's quantizer or converter: INFO log lines (onnxruntime.quantization logs on the
    root logger, TensorFlow on its own) and what it prints to stdout (progress, Keras' signatures)."""
    previous = logging.root.manager.disable
    logging.disable(max(previous, logging.INFO))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def as_tuple(inputs: Any) -> tuple[Any, ...]:
    """Model inputs as a tuple of its arguments: a tuple/list as is, a dict's values in its order (which
    must be the model's input order), anything else as the one argument."""
    if isinstance(inputs, dict):
        return tuple(inputs.values())
    return tuple(inputs) if isinstance(inputs, list | tuple) else (inputs,)


def to_numpy(x: Any) -> np.ndarray:
    """A tensor of any framework (torch, an MXNet NDArray, TensorFlow) or an array-like as a numpy
    array, dtype kept."""
    if hasattr(x, "detach"):  # torch, without importing it here
        return x.detach().cpu().numpy()
    if hasattr(x, "asnumpy"):  # MXNet
        return x.asnumpy()
    return np.asarray(x)


def numpy_inputs(inputs: Any, float32: bool = False) -> list[np.ndarray]:
    """Model inputs (one tensor/array, a tuple/list of them, or a dict name -> array, in the model's
    input order) as a list of numpy arrays; with `float32`, floating inputs become float32 (what a
    float32 graph takes)."""
    arrays = [to_numpy(x) for x in as_tuple(inputs)]
    if float32:
        arrays = [a.astype(np.float32, copy=False) if np.issubdtype(a.dtype, np.floating) else a for a in arrays]
    return arrays


def take_numpy_inputs(loader: Iterable[Any], n: int, what: str, float32: bool = False) -> Any:
    """The first `n` input samples of a dataloader of (inputs, labels) as one batch of numpy arrays
    (a tuple of them for several inputs, a dict for named ones): `take_inputs` for the numpy-fed
    frameworks."""
    batches = list(limited_batches(loader, n, what))
    if isinstance(batches[0], dict):
        return {k: np.concatenate([numpy_inputs(b[k], float32)[0] for b in batches]) for k in batches[0]}
    parts = [numpy_inputs(b, float32) for b in batches]
    joined = [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]
    return joined[0] if len(joined) == 1 else tuple(joined)


@dataclass(frozen=True)
class RangeRule:
    """What a back end narrows to 7 bits where this CPU's INT8 kernels would saturate (they sum u8 x s8
    pairs into 16 bits without `feature`), for `Adaptor._reduce_range` and `Adaptor.cpu_notes`."""

    saturates: bool  # whether this CPU's kernels saturate with full-range INT8
    narrows: str  # what reduce_range makes 7-bit: "INT8 activations", "INT8 weights"
    feature: str  # the CPU feature (or engine) that accumulates in 32 bits: "AVX512-VNNI", "VNNI"
    kernels: str  # whose kernels saturate: "FBGEMM's INT8 kernels"
    also: str = ""  # what else 7-bit costs, appended to the note: "; symmetric activations unavailable"


class Adaptor(ABC):
    """Turns a framework model + a TuneConfig into a real quantized model, and measures it.

    A back end implements `capabilities`, `predict`, `runner`, `size_bytes`, `inspect` and the hooks
    `_quantize` (the framework's quantizer), `_op_names` and `_stayed_float` (what the quantized model
    really computes in float), `_footprint_run`, `_save` and `_content`; the public methods around them
    are this class's."""

    name: str = "base"
    layout: str = "NCHW"  # how this framework wants image batches (YAML-described dataloaders follow it)
    approaches: tuple[str, ...] = ("post_training_static_quant", "post_training_dynamic_quant")
    cache_calibration: bool = True
    float32_inputs: bool = False  # `take_inputs` casts floating inputs to float32 (the graph takes float32)
    verify_int8: bool = False  # `quantize` also fails when an op configured INT8 came out float
    recipes: tuple[str, ...] = ()  # the recipes this back end applies (lpot_research.quant.space.RECIPES)
    REWRITES = ("cle", "smooth_quant")  # recipes that rewrite the FP32 model (bias correction is per config)

    # ------------------------------------------------------------------ calibration
    @property
    def calibration(self) -> CalibrationCache:
        """This adaptor's calibration cache (created on first use: constructors only store arguments)."""
        cache = self.__dict__.get("_calibration_cache")
        if cache is None:
            cache = self.__dict__["_calibration_cache"] = CalibrationCache(bool(self.cache_calibration))
        return cache

    @property
    def calibrations(self) -> int:
        """How many calibration passes ran (private state: it does not enter the run key)."""
        return self.calibration.passes

    # ------------------------------------------------------------------ checks and settings
    def check_approach(self, approach: str) -> None:
        if approach not in self.approaches:
            from lpot_research.core.errors import ConfigError

            raise ConfigError(f"quantization.approach={approach!r} is not supported by framework={self.name}; "
                              f"valid choices: {list(self.approaches)}")

    def range_rule(self) -> RangeRule | None:
        """This back end's reduce-range rule on this CPU (None: it never narrows INT8)."""
        return None

    def _reduce_range(self) -> bool:
        """7-bit INT8 (`range_rule().narrows`): `framework.reduce_range` when set, else where this CPU's
        kernels would saturate."""
        forced = getattr(self, "reduce_range", None)
        if forced is not None:
            return bool(forced)
        rule = self.range_rule()
        return rule is not None and rule.saturates

    def _check_reduce_range(self) -> None:
        value = getattr(self, "reduce_range", None)
        if not isinstance(value, bool | None):
            from lpot_research.core.errors import ConfigError

            raise ConfigError(f"framework.reduce_range={value!r} must be true, false or null (auto)")

    def cpu_notes(self) -> list[str]:
        """What this CPU changes in how this back end quantizes (e.g. 7-bit INT8 without VNNI, no BF16
        fallback), one short phrase each; printed once at the start of a run. Default: the range rule's."""
        rule = self.range_rule()
        if rule is None:
            return []
        forced, reduced = getattr(self, "reduce_range", None), self._reduce_range()
        if forced is None:
            if reduced:
                return [f"{rule.narrows} 7-bit (no {rule.feature}: {rule.kernels} would saturate){rule.also}"]
            return [f"{rule.narrows} full range ({rule.feature})"]
        if not reduced and rule.saturates:
            return [f"WARNING: full-range {rule.narrows} without {rule.feature}: {rule.kernels} may saturate"]
        return [f"{rule.narrows} {'7-bit' if reduced else 'full range'} (framework.reduce_range)"
                f"{rule.also if reduced else ''}"]

    def setup_process(self) -> None:
        """Apply this adaptor's process-wide settings (e.g. the intra-op thread count) in a worker process
        that received it pickled (lpot_research.run.scheduler)."""
        return None

    def set_training(self, train_func: Any, settings: dict[str, Any]) -> None:
        """For quant_aware_training: the user's `train_func(model)` (or None) and the configured loop's
        settings (quantization.qat). Only adaptors that list quant_aware_training are called."""
        raise NotImplementedError(f"framework={self.name} lists quant_aware_training but has no set_training")

    # ------------------------------------------------------------------ models
    def prepare(self, model: Any, example_inputs: Any) -> Any:
        """Bring a user/built-in model into this framework's form (e.g. export). Default: as is."""
        return model

    def portable(self, model: Any, example_inputs: Any) -> Any:
        """A prepared model in a form that pickles to a worker process, where `restore` gives it back.
        Default: the model itself."""
        return model

    def restore(self, sent: Any, example_inputs: Any) -> Any:
        """The prepared model back from `portable`'s form, in a worker process."""
        return sent

    def fingerprint(self, model: Any) -> str:
        """A hash of a prepared model's content (`_content`: its weights and structure), so that a run dir
        of another model is never resumed as this one's."""
        h = hashlib.sha256()
        for chunk in self._content(model):
            h.update(chunk)
        return h.hexdigest()[:16]

    def _content(self, model: Any) -> Iterable[bytes]:
        """Hook: the bytes that identify a prepared model. Default: its pickle."""
        import pickle

        try:
            return [pickle.dumps(model)]
        except Exception as e:  # noqa: BLE001 - an unpicklable model needs the adaptor's own fingerprint
            raise NotImplementedError(f"{type(self).__name__} cannot fingerprint a {type(model).__name__}: {e}") from e

    @abstractmethod
    def capabilities(self, model: Any, approach: str, example_inputs: Any) -> list[OpCapability]:
        """Per-op options this framework supports for `model` (in model order)."""

    # ------------------------------------------------------------------ quantization
    def quantize(self, model: Any, config: TuneConfig, calib_dataloader: Iterable[Any], example_inputs: Any) -> Any:
        """A new quantized model for `config`; the input model is left untouched. Fails (the trial runner
        records a failed trial) on an approach this back end lacks, an op the model does not have, or a
        quantized model that does not compute the configured ops as configured."""
        self.check_approach(config.approach)
        self._check_op_names(model, config)
        unknown = [n for n, _ in config.recipes if n not in self.recipes]
        if unknown:
            from lpot_research.core.errors import ConfigError

            raise ConfigError(f"recipe {unknown[0]!r} is not available with framework={self.name}; valid choices: "
                              f"{list(self.recipes)}")
        source = self.recipe_model(model, config, calib_dataloader)
        quantized = self._quantize(source, config, calib_dataloader, example_inputs)
        self._check_fallbacks(model, config, quantized)
        return quantized

    # ------------------------------------------------------------------ recipes
    def recipe_model(self, model: Any, config: TuneConfig, calib_dataloader: Iterable[Any]) -> Any:
        """`model` rewritten in FP32 by the configuration's model-level recipes (cle, then smooth_quant),
        `model` itself without them. The last two rewritten models are kept, so trials with the same
        recipes share one rewrite and its calibration."""
        rewrites = tuple((n, v) for n, v in config.recipes if n in self.REWRITES)
        if not rewrites:
            return model
        kept = self.__dict__.setdefault("_recipe_models", collections.OrderedDict())
        key = (id(model), rewrites, config.sampling_size)
        hit = kept.get(key)
        if hit is not None and hit[0] is model:
            kept.move_to_end(key)
            return hit[1]
        out = model
        for name, value in rewrites:
            out = self._rewrite(out, name, value, calib_dataloader, config.sampling_size)
        kept[key] = (model, out)
        while len(kept) > 2:
            kept.popitem(last=False)
        return out

    def _rewrite(self, model: Any, recipe: str, value: Any, calib_dataloader: Iterable[Any], sampling_size: int) -> Any:
        """Hook: a new FP32 model, `model` with a model-level recipe applied (lpot_research.quant.recipes)."""
        raise NotImplementedError(f"{type(self).__name__} has no recipe {recipe!r}")

    def input_stats(self, model: Any, calib_dataloader: Iterable[Any], sampling_size: int) -> dict[str, Any]:
        """Per op, lpot_research.quant.recipes.ChannelStats of its input activation in `model` over the first
        `sampling_size` calibration samples: one pass, cached per model and sampling size."""
        return self.calibration.get(("input_stats", self._model_key(model), sampling_size),
                                    lambda: self._input_stats(model, calib_dataloader, sampling_size))

    def _input_stats(self, model: Any, calib_dataloader: Iterable[Any], sampling_size: int) -> dict[str, Any]:
        """Hook: the pass behind `input_stats`."""
        raise NotImplementedError(f"{type(self).__name__} collects no input statistics")

    def _model_key(self, model: Any) -> str:
        """What names a model in the calibration cache. Default: its fingerprint."""
        return self.fingerprint(model)

    def __getstate__(self) -> dict[str, Any]:
        """Rewritten models stay in their process (a worker rewrites its own)."""
        return {k: v for k, v in self.__dict__.items() if k != "_recipe_models"}

    def _quantize(self, model: Any, config: TuneConfig, calib_dataloader: Iterable[Any], example_inputs: Any) -> Any:
        """Hook: the framework's quantizer (calibrating through `self.calibration`)."""
        raise NotImplementedError(f"{type(self).__name__} has no _quantize")

    def _op_names(self, model: Any) -> list[str] | None:
        """Hook: the names of the prepared model's quantizable ops (None: not checked)."""
        return None

    def _check_op_names(self, model: Any, config: TuneConfig) -> None:
        names = self._op_names(model)
        if names is None:
            return
        known = set(names)
        unknown = [n for n, _ in config.ops if n not in known]
        if unknown:
            from lpot_research.core.errors import ConfigError

            raise ConfigError(f"op {unknown[0]!r} of the configuration is not in the {self.name} model; "
                              f"valid op names: {names}")

    def _stayed_float(self, model: Any, quantized: Any) -> dict[str, bool]:
        """Hook: op name -> whether the op computes in float (FP32 or BF16) in `quantized`, read from the
        quantized model itself; an op left out cannot be told (e.g. a TorchScript model's)."""
        return {}

    def _check_fallbacks(self, model: Any, config: TuneConfig, quantized: Any) -> None:
        """Each op configured FP32/BF16 must compute in float in the quantized model (a fallback the
        quantizer ignored would score a model the configuration does not describe); with `verify_int8`,
        each op configured INT8 must not."""
        stayed = self._stayed_float(model, quantized)
        for name, choice in config.ops:
            if name not in stayed:
                continue
            if not choice.quantized and not stayed[name]:
                raise FallbackError(f"op {name!r} was to stay {choice.dtype.upper()} but {self.name} quantized it")
            if self.verify_int8 and choice.quantized and stayed[name]:
                raise FallbackError(f"op {name!r} was to be INT8 but {self.name} left it in float")

    def count_samples(self, loader: Iterable[Any], limit: int) -> int:
        """How many samples the dataloader yields, counting no further than `limit`."""
        return sum(batch_len(b) for b in limited_batches(loader, limit, "calibration"))

    # ------------------------------------------------------------------ running and measuring
    def take_inputs(self, loader: Iterable[Any], n: int, what: str = "benchmark") -> Any:
        """The first `n` input samples of a dataloader of (inputs, labels), as one batch (numpy arrays;
        float32 with `float32_inputs`)."""
        return take_numpy_inputs(loader, n, what, float32=self.float32_inputs)

    @abstractmethod
    def predict(self, model: Any, inputs: Any) -> Any:
        """Run the model on one batch of inputs."""

    def evaluate(self, model: Any, dataloader: Iterable[Any], metric: Any) -> float:
        metric.reset()
        for inputs, labels in batches(dataloader, "evaluation"):
            metric.update(self.predict(model, inputs), labels)
        return float(metric.result())

    @abstractmethod
    def runner(self, model: Any, inputs: Any) -> Callable[[], Any]:
        """A function that runs one inference of `model` on `inputs` (set up once: sessions, feeds,
        converted inputs), for timing."""

    def latency_ms(self, model: Any, inputs: Any, warmup: int, iterations: int) -> float:
        """Median wall time of one inference on `inputs`, after warm-up."""
        run = self.runner(model, inputs)
        for _ in range(warmup):
            run()
        times = []
        for _ in range(max(1, iterations)):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e3

    def measure_latency(self, model: Any, inputs: Any, bench: Benchmark, reference: Any = None) -> Latency:
        """Latency of `model`, interleaved with `reference` (the FP32 model) when given, until stable
        (lpot_research.measure.benchmark)."""
        ref = self.runner(reference, inputs) if reference is not None else None
        return measure(self.runner(model, inputs), bench, ref)

    profiler = ""  # the framework profiler `op_costs` reads ("": none wired)

    def op_costs(self, fp32_model: Any, int8_model: Any, inputs: Any, op_names: list[str], runs: int) -> Any:
        """Per-op milliseconds of one inference on `inputs` in the FP32 model and in `int8_model` (every op
        quantized), from the framework's own profiler (`profiler`): a lpot_research.measure.op_costs.OpCosts."""
        raise NotImplementedError(f"{type(self).__name__} has no profiler wired for per-op costs")

    @abstractmethod
    def size_bytes(self, model: Any) -> int:
        """Bytes of the serialized model."""

    def footprint_bytes(self, model: Any, inputs: Any) -> int:
        """Peak memory of loading and running the model once on `inputs`, after one warm-up of the same
        (one-time library, kernel and allocator set-up is not the model's footprint)."""
        from lpot_research.measure.objectives import peak_rss_increase

        with self._footprint_run(model, inputs) as load_and_run:
            load_and_run()
            return peak_rss_increase(load_and_run)

    def _footprint_run(self, model: Any, inputs: Any) -> contextlib.AbstractContextManager[Callable[[], Any]]:
        """Hook: a context giving a function that loads a fresh copy of the model and runs it once."""
        raise NotImplementedError(f"{type(self).__name__} has no _footprint_run")

    @abstractmethod
    def inspect(self, model: Any, inputs: Any, op_names: list[str]) -> dict[str, Any]:
        """Per-op outputs (as float numpy arrays) of `model` on `inputs`, for the given op names.

        `model` is one returned by `quantize`; the comparable FP32 reference is the model quantized
        with every op in fp32 (the same graph rewrites, e.g. fusions, with no quantization)."""

    def save(self, model: Any, path: Path, example_inputs: Any) -> Path:
        """Save in the framework's own format, loadable without this package. Returns the file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return self._save(model, path, example_inputs)

    def _save(self, model: Any, path: Path, example_inputs: Any) -> Path:
        """Hook: write `model` at `path` (the suffix is the back end's) and return the file."""
        raise NotImplementedError(f"{type(self).__name__} has no _save")


def describe_inputs(inputs: Any) -> str:
    """A batch of inputs in a few words: shapes and dtypes (names for a dict)."""
    if isinstance(inputs, dict):
        return ", ".join(f"{k}: {tuple(np.shape(v))} {getattr(v, 'dtype', '')}" for k, v in inputs.items())
    items = inputs if isinstance(inputs, tuple | list) else (inputs,)
    return ", ".join(f"{tuple(np.shape(v))} {getattr(v, 'dtype', '')}" for v in items)
