"""The framework adaptor interface. One subclass per framework; constructors only store arguments."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lpot_research.errors import DataError
from lpot_research.space import OpCapability, TuneConfig


def count_batches(loader: Iterable[Any], what: str) -> Iterator[Any]:
    """Iterate a dataloader, raising a clear error if it yields nothing."""
    n = 0
    for batch in loader:
        n += 1
        yield batch
    if n == 0:
        raise DataError(f"the {what} dataloader yielded no batch; give it at least one (inputs, labels) batch")


def batch_len(inputs: Any) -> int:
    """Samples in one batch of inputs (a tensor/array, or a tuple/list of them for several inputs)."""
    return len(inputs[0] if isinstance(inputs, tuple | list) else inputs)


def limited_batches(loader: Iterable[Any], limit: int, what: str) -> Iterator[Any]:
    """The input batches of a dataloader of (inputs, labels), the last one cut, so that `limit`
    samples come out (fewer when the dataloader holds fewer)."""
    seen = 0
    for inputs, _ in count_batches(loader, what):
        take = min(batch_len(inputs), limit - seen)
        yield type(inputs)(x[:take] for x in inputs) if isinstance(inputs, tuple | list) else inputs[:take]
        seen += take
        if seen >= limit:
            return


def to_numpy(x: Any) -> np.ndarray:
    """A tensor of any framework (torch, an MXNet NDArray, TensorFlow) or an array-like as a numpy
    array, dtype kept."""
    if hasattr(x, "detach"):  # torch, without importing it here
        return x.detach().cpu().numpy()
    if hasattr(x, "asnumpy"):  # MXNet
        return x.asnumpy()
    return np.asarray(x)


def numpy_inputs(inputs: Any, float32: bool = False) -> list[np.ndarray]:
    """Model inputs (one tensor/array, or a tuple/list of them) as a list of numpy arrays; with
    `float32`, floating inputs become float32 (what a float32 graph takes)."""
    arrays = [to_numpy(x) for x in (inputs if isinstance(inputs, tuple | list) else (inputs,))]
    if float32:
        arrays = [a.astype(np.float32, copy=False) if np.issubdtype(a.dtype, np.floating) else a for a in arrays]
    return arrays


def take_numpy_inputs(loader: Iterable[Any], n: int, what: str, float32: bool = False) -> Any:
    """The first `n` input samples of a dataloader of (inputs, labels) as one batch of numpy arrays
    (a tuple of them for several inputs): `take_inputs` for the numpy-fed frameworks."""
    parts = [numpy_inputs(b, float32) for b in limited_batches(loader, n, what)]
    joined = [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]
    return joined[0] if len(joined) == 1 else tuple(joined)


class Adaptor(ABC):
    """Turns a framework model + a TuneConfig into a real quantized model, and measures it."""

    name: str = "base"
    layout: str = "NCHW"  # how this framework wants image batches (YAML-described dataloaders follow it)
    approaches: tuple[str, ...] = ("post_training_static_quant", "post_training_dynamic_quant")

    def check_approach(self, approach: str) -> None:
        if approach not in self.approaches:
            from lpot_research.errors import ConfigError

            raise ConfigError(f"quantization.approach={approach!r} is not supported by framework={self.name}; "
                              f"valid choices: {list(self.approaches)}")

    def cpu_notes(self) -> list[str]:
        """What this CPU changes in how this back end quantizes (e.g. 7-bit INT8 without VNNI, no BF16
        fallback), one short phrase each; printed once at the start of a run."""
        return []

    def set_training(self, train_func: Any, settings: dict[str, Any]) -> None:
        """For quant_aware_training: the user's `train_func(model)` (or None) and the configured loop's
        settings (quantization.qat). Only adaptors that list quant_aware_training are called."""
        raise NotImplementedError(f"framework={self.name} lists quant_aware_training but has no set_training")

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
        for inputs, labels in count_batches(dataloader, "evaluation"):
            metric.update(self.predict(model, inputs), labels)
        return float(metric.result())

    @abstractmethod
    def latency_ms(self, model: Any, inputs: Any, warmup: int, iterations: int) -> float:
        """Median wall time of one inference on `inputs`, after warm-up."""

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
