"""The framework adaptor interface. One subclass per framework; constructors only store arguments."""

from __future__ import annotations

import statistics
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from lpot_research.batches import batch_len, batches, limited_batches
from lpot_research.benchmark import Benchmark, Latency, measure
from lpot_research.space import OpCapability, TuneConfig

__all__ = ["Adaptor", "CalibrationCache", "batch_len", "batches", "limited_batches", "numpy_inputs",
           "take_numpy_inputs", "to_numpy"]
T = TypeVar("T")


class CalibrationCache:
    """The one calibration cache of every back end: calibration statistics are computed once per key
    (the model, the sampling size, the algorithm, ...) and reused by every trial that needs them, and
    the passes and seconds spent are counted (each trial's cost report reads them).

    `get(key, compute)` caches a whole result; `get_many(key, names, compute)` caches per-name entries
    (e.g. tensor ranges) and computes only the names it does not hold yet.

    `share` (a directory; set by a parallel run for its local workers and itself) makes `get` results
    of one run computed by one process only: the first to need a key computes it and writes it there,
    the others wait for the file instead of repeating the pass."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._store: dict[Any, Any] = {}
        self.passes = 0
        self.seconds = 0.0
        self.share: str | None = None
        self._depth = 0  # computations in progress: a nested one (a window search that needs the
        # histograms) is timed by the outer one only, so `seconds` never exceeds the wall time

    def _run(self, compute: Callable[[], T], data_pass: bool = True) -> T:
        t0 = time.perf_counter()
        self._depth += 1
        try:
            return compute()
        finally:
            self._depth -= 1
            self.passes += data_pass
            if self._depth == 0:
                self.seconds += time.perf_counter() - t0

    def get(self, key: Any, compute: Callable[[], T], data_pass: bool = True) -> T:
        """`data_pass=False`: `compute` derives from cached statistics (e.g. a window search on cached
        histograms) and is not counted as a pass over the calibration data."""
        if self.enabled and key in self._store:
            return self._store[key]
        if self.enabled and self.share and data_pass and _plain(key):
            value = _shared(Path(self.share), key, lambda: self._run(compute, data_pass))
        else:
            value = self._run(compute, data_pass)
        if self.enabled:
            self._store[key] = value
        return value

    def get_many(self, key: Any, names: Iterable[str], compute: Callable[[list[str]], dict[str, Any]],
                 everything: Callable[[], Iterable[str]] | None = None) -> dict[str, Any]:
        """Entries `names` of the table `key`; the missing ones come from `compute(missing)` (the
        first pass computes `everything()` too, so later trials rarely need another)."""
        table = self._store.setdefault(key, {}) if self.enabled else {}
        wanted = list(dict.fromkeys(names))
        missing = [n for n in wanted if n not in table]
        if missing:
            if self.enabled and not table and everything is not None:
                missing = list(dict.fromkeys([*missing, *everything()]))
            table.update(self._run(lambda: compute(missing)))
        return {n: table[n] for n in wanted}


def _plain(key: Any) -> bool:
    """A key whose repr names it in every process (str, numbers, tuples of them)."""
    if isinstance(key, tuple):
        return all(_plain(k) for k in key)
    return isinstance(key, str | int | float | bool) or key is None


def _shared(directory: Path, key: Any, compute: Callable[[], T]) -> T:
    """`compute()` once across the processes sharing `directory`: the first to take the key's lock file
    computes and publishes it (an atomic rename); the others wait for it (or take over if its owner
    died)."""
    import hashlib
    import os
    import pickle

    name = hashlib.sha256(repr(key).encode()).hexdigest()[:32]
    path, lock = directory / f"{name}.pkl", directory / f"{name}.lock"
    while True:
        if path.exists():
            return pickle.loads(path.read_bytes())
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                text = lock.read_text()
                if text:
                    os.kill(int(text), 0)  # its owner is alive: wait for the result
                elif time.time() - lock.stat().st_mtime > 5:
                    raise ProcessLookupError  # its owner died before writing its pid
            except (ValueError, ProcessLookupError):
                lock.unlink(missing_ok=True)  # its owner died: take over
            except FileNotFoundError:
                pass
            time.sleep(0.05)
            continue
        try:
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            value = compute()
            try:
                blob = pickle.dumps(value)
            except Exception:  # noqa: BLE001 - not shareable: the others compute their own
                return value
            tmp = directory / f"{name}.{os.getpid()}.tmp"
            tmp.write_bytes(blob)
            os.replace(tmp, path)
            return value
        finally:
            lock.unlink(missing_ok=True)


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
    if isinstance(inputs, dict):
        inputs = tuple(inputs.values())
    arrays = [to_numpy(x) for x in (inputs if isinstance(inputs, tuple | list) else (inputs,))]
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


class Adaptor(ABC):
    """Turns a framework model + a TuneConfig into a real quantized model, and measures it."""

    name: str = "base"
    layout: str = "NCHW"  # how this framework wants image batches (YAML-described dataloaders follow it)
    approaches: tuple[str, ...] = ("post_training_static_quant", "post_training_dynamic_quant")
    cache_calibration: bool = True

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

    def check_approach(self, approach: str) -> None:
        if approach not in self.approaches:
            from lpot_research.errors import ConfigError

            raise ConfigError(f"quantization.approach={approach!r} is not supported by framework={self.name}; "
                              f"valid choices: {list(self.approaches)}")

    def cpu_notes(self) -> list[str]:
        """What this CPU changes in how this back end quantizes (e.g. 7-bit INT8 without VNNI, no BF16
        fallback), one short phrase each; printed once at the start of a run."""
        return []

    def setup_process(self) -> None:
        """Apply this adaptor's process-wide settings (e.g. the intra-op thread count) in a worker process
        that received it pickled (lpot_research.scheduler)."""
        return None

    def set_training(self, train_func: Any, settings: dict[str, Any]) -> None:
        """For quant_aware_training: the user's `train_func(model)` (or None) and the configured loop's
        settings (quantization.qat). Only adaptors that list quant_aware_training are called."""
        raise NotImplementedError(f"framework={self.name} lists quant_aware_training but has no set_training")

    def fingerprint(self, model: Any) -> str:
        """A hash of a prepared model's content (its weights and structure), so that a run dir of another
        model is never resumed as this one's. Default: the hash of its pickle."""
        import hashlib
        import pickle

        try:
            blob = pickle.dumps(model)
        except Exception as e:  # noqa: BLE001 - an unpicklable model needs the adaptor's own fingerprint
            raise NotImplementedError(f"{type(self).__name__} cannot fingerprint a {type(model).__name__}: {e}") from e
        return hashlib.sha256(blob).hexdigest()[:16]

    def prepare(self, model: Any, example_inputs: Any) -> Any:
        """Bring a user/built-in model into this framework's form (e.g. export). Default: as is."""
        return model

    @abstractmethod
    def capabilities(self, model: Any, approach: str, example_inputs: Any) -> list[OpCapability]:
        """Per-op options this framework supports for `model` (in model order)."""

    @abstractmethod
    def quantize(self, model: Any, config: TuneConfig, calib_dataloader: Iterable[Any], example_inputs: Any) -> Any:
        """A new quantized model for `config`; the input model is left untouched."""

    def count_samples(self, loader: Iterable[Any], limit: int) -> int:
        """How many samples the dataloader yields, counting no further than `limit`."""
        return sum(batch_len(b) for b in limited_batches(loader, limit, "calibration"))

    @abstractmethod
    def take_inputs(self, loader: Iterable[Any], n: int, what: str = "benchmark") -> Any:
        """The first `n` input samples of a dataloader of (inputs, labels), as one batch."""

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
        (lpot_research.benchmark)."""
        ref = self.runner(reference, inputs) if reference is not None else None
        return measure(self.runner(model, inputs), bench, ref)

    @abstractmethod
    def size_bytes(self, model: Any) -> int:
        """Bytes of the serialized model."""

    @abstractmethod
    def footprint_bytes(self, model: Any, inputs: Any) -> int:
        """Peak memory of loading and running the model once on `inputs`."""

    @abstractmethod
    def inspect(self, model: Any, inputs: Any, op_names: list[str]) -> dict[str, Any]:
        """Per-op outputs (as float numpy arrays) of `model` on `inputs`, for the given op names.

        `model` is one returned by `quantize`; the comparable FP32 reference is the model quantized
        with every op in fp32 (the same graph rewrites, e.g. fusions, with no quantization)."""

    @abstractmethod
    def save(self, model: Any, path: Path, example_inputs: Any) -> Path:
        """Save in the framework's own format, loadable without this package. Returns the file."""


def describe_inputs(inputs: Any) -> str:
    """A batch of inputs in a few words: shapes and dtypes (names for a dict)."""
    if isinstance(inputs, dict):
        return ", ".join(f"{k}: {tuple(np.shape(v))} {getattr(v, 'dtype', '')}" for k, v in inputs.items())
    items = inputs if isinstance(inputs, tuple | list) else (inputs,)
    return ", ".join(f"{tuple(np.shape(v))} {getattr(v, 'dtype', '')}" for v in items)
