"""The one schema of the tuning settings: typed dataclasses, their defaults written once, used by the
Python API (`tune(config=...)`) and registered in Hydra's ConfigStore for `tune.py` (conf/tune.yaml
extends it), so both check the same keys and types the same way.

Bad input is one line naming the key, the value and what is valid (`settings_error`), raised before
any model is loaded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional  # noqa: UP035 - OmegaConf reads these forms

from lpot_research.core.errors import ConfigError
from lpot_research.measure.benchmark import Benchmark
from lpot_research.quant.criterion import AccuracyCriterion
from lpot_research.quant.qat import LOSSES, QAT
from lpot_research.quant.space import RECIPES, check_approach, recipe_dimensions
from lpot_research.run.policy import BACKENDS, ExitPolicy, Parallel
from lpot_research.strategies.base import DEFAULT_SEED

__all__ = ["BACKENDS", "DEFAULT_SEED", "LOSSES", "QAT", "ExitPolicy", "Parallel", "Settings", "load_settings"]



@dataclass
class TensorSpec:
    """Constraints on one tensor of every op (None = what the framework recommends; a value or a list
    narrows it)."""

    dtype: Any = None  # int8 | uint8 (quantized) and bf16 | fp32 (fallback precisions allowed)
    scheme: Any = None  # sym | asym
    granularity: Any = None  # per_channel | per_tensor
    algorithm: Any = None  # minmax | kl | histogram | percentile


@dataclass
class ModelWise:
    weight: TensorSpec = field(default_factory=TensorSpec)
    activation: TensorSpec = field(default_factory=TensorSpec)


@dataclass
class Calibration:
    sampling_size: Any = 100  # an int, or a list of them (then one more tuning dimension)
    dataloader: Any = None  # a calibration dataloader described in YAML (lpot_research.models.data), or None


@dataclass
class Recipes:
    """Recipes that keep ops INT8 with less error, each one more tuning dimension (off is always a
    choice): lpot_research.quant.recipes."""

    cle: bool = False  # cross-layer equalization of conv -> [ReLU] -> conv pairs (Nagel et al., 2019)
    smooth_quant: Any = None  # SmoothQuant alphas to try on Linear/MatMul inputs (Xiao et al., 2023), e.g. [0.5]
    bias_correction: bool = False  # bias correction of weight rounding (Nagel et al., 2019)

    def __post_init__(self) -> None:
        recipe_dimensions(dataclasses.asdict(self), RECIPES, "any", "post_training_static_quant")  # the values


@dataclass
class Quantization:
    approach: str = "post_training_static_quant"
    calibration: Calibration = field(default_factory=Calibration)
    model_wise: ModelWise = field(default_factory=ModelWise)
    op_wise: Dict[str, Any] = field(default_factory=dict)  # noqa: UP006  # op name or regex (full match) -> {weight, activation}
    qat: QAT = field(default_factory=QAT)
    recipes: Recipes = field(default_factory=Recipes)

    def __post_init__(self) -> None:
        check_approach(self.approach)

    @property
    def sampling_sizes(self) -> list[Any]:
        s = self.calibration.sampling_size
        return list(s) if isinstance(s, list | tuple) else [s]


@dataclass
class Evaluation:
    """early_stop: stop a trial's evaluation once it cannot meet the criterion (metrics that are means of
    per-sample scores); ranking_samples: the ranking subset failing configurations are compared on."""

    early_stop: bool = True
    ranking_samples: int = 300

    def __post_init__(self) -> None:
        r = self.ranking_samples
        if not isinstance(r, int) or isinstance(r, bool) or r < 1:
            raise ConfigError(f"evaluation.ranking_samples={r!r} must be an int >= 1")


@dataclass
class BenchmarkSettings:
    """How latency is measured (lpot_research.measure.benchmark); batch_size None = the model's benchmark batch."""

    batch_size: Optional[int] = None  # noqa: UP045
    warmup: int = Benchmark.warmup
    iterations: int = Benchmark.iterations
    min_iterations: int = Benchmark.min_iterations
    tolerance: float = Benchmark.tolerance
    max_seconds: float = Benchmark.max_seconds

    def __post_init__(self) -> None:
        self.build(1)  # the checks

    def build(self, default_batch: int) -> Benchmark:
        d = dataclasses.asdict(self)
        d["batch_size"] = d["batch_size"] if d["batch_size"] is not None else default_batch
        return Benchmark(**d)


@dataclass
class Settings:
    """Every tuning key of conf/tune.yaml and of the API's `config` (the component groups aside)."""

    quantization: Quantization = field(default_factory=Quantization)
    accuracy_criterion: AccuracyCriterion = field(default_factory=AccuracyCriterion)
    exit_policy: ExitPolicy = field(default_factory=ExitPolicy)
    benchmark: BenchmarkSettings = field(default_factory=BenchmarkSettings)
    evaluation: Evaluation = field(default_factory=Evaluation)
    parallel: Parallel = field(default_factory=Parallel)
    random_seed: int = DEFAULT_SEED
    threads: int = 1  # intra-op threads for tuning and benchmarks (the API's default too)
    tensorboard: bool = False  # per-op output histograms of FP32 and every trial in <run dir>/tensorboard

    def __post_init__(self) -> None:
        if not isinstance(self.threads, int) or isinstance(self.threads, bool) or self.threads < 1:
            raise ConfigError(f"threads={self.threads!r} must be an int >= 1")
        if not isinstance(self.random_seed, int) or isinstance(self.random_seed, bool) or self.random_seed < 0:
            raise ConfigError(f"random_seed={self.random_seed!r} must be an int >= 0")


@dataclass
class CliSettings(Settings):
    """conf/tune.yaml: the settings plus the component groups (instantiated from their `_target_`)."""

    strategy: Any = None
    framework: Any = None
    model: Any = None
    objective: Any = None
    tracker: Any = None
    metric: Any = None
    data: Any = None  # your own data (conf/data/): evaluation and calibration samples of a model=file
    resume: Optional[str] = None  # noqa: UP045 - a run dir to continue


def register() -> None:
    """Put the schema in Hydra's ConfigStore as `tune_schema` (conf/tune.yaml's defaults list starts with it).
    `quantization.op_wise` takes op names as keys, so it is open (`quantization.op_wise={fc: ...}` and
    `quantization.op_wise.fc.activation.dtype=[fp32]` work as written, without `+`)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    node = schema(CliSettings)
    OmegaConf.set_struct(node.quantization.op_wise, False)
    ConfigStore.instance().store(name="tune_schema", node=node)


def schema(cls: type) -> Any:
    """`cls` as an OmegaConf node whose values can be set. The settings' frozen types (AccuracyCriterion,
    ExitPolicy: the objects the run uses, checked when built) would make their nodes read-only."""
    from omegaconf import DictConfig, OmegaConf

    node = OmegaConf.structured(cls)
    todo = [node]
    while todo:
        n = todo.pop()
        OmegaConf.set_readonly(n, None)  # the flag of its parent (none: writable)
        todo += [n._get_node(k) for k in n if isinstance(n._get_node(k), DictConfig)]
    return node


# ---------------------------------------------------------------------------------------------- errors
def _valid_keys(node: Any) -> list[str]:
    from omegaconf import DictConfig

    return list(node.keys()) if isinstance(node, DictConfig) else []


def settings_error(e: BaseException, root: Any = None) -> ConfigError:
    """One line for an OmegaConf/Hydra error about the settings: the key, the value, what is valid."""
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

    inner: BaseException = e
    while not isinstance(inner, OmegaConfBaseException) and inner.__cause__ is not None:
        inner = inner.__cause__
    if isinstance(inner, ConfigError):
        return inner
    if not isinstance(inner, OmegaConfBaseException):
        return ConfigError(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
    key = getattr(inner, "full_key", None) or getattr(inner, "key", None) or "?"
    msg = str(getattr(inner, "msg", inner)).strip().splitlines()[0]
    if isinstance(inner, ConfigKeyError) or "not in struct" in msg or "Key '" in msg and "not" in msg:
        parent, _, leaf = str(key).rpartition(".")
        node = OmegaConf.select(root, parent) if root is not None and parent else root
        valid = _valid_keys(node)
        where = f"{parent}." if parent else ""
        return ConfigError(f"unknown key {where}{leaf}" + (f"; valid keys: {', '.join(valid)}" if valid else ""))
    if isinstance(inner, ValidationError):
        value = getattr(inner, "value", None)
        if "is not a subclass of" in msg:  # a value where a group of settings belongs (exit_policy=fast)
            valid = _valid_keys(OmegaConf.select(root, str(key)) if root is not None else None)
            return ConfigError(f"{key}={value!r}: {key} is a group of settings, not a value; set one of them, e.g. "
                               f"{key}.{valid[0] if valid else '<key>'}=..." + (f" (keys: {', '.join(valid)})"
                                                                              if valid else ""))
        for needle, kind in (("to Integer", "an integer"), ("to Float", "a number"), ("valid bool", "true or false"),
                             ("to String", "a string")):
            if needle in msg:
                return ConfigError(f"{key}={value!r} must be {kind}")
        return ConfigError(f"{key}={value!r}: {msg}")
    return ConfigError(f"{key}: {msg}")


def load_settings(mapping: Any) -> Settings:
    """Settings from a mapping (the API's `config`), checked key by key and value by value."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    base = schema(Settings)
    try:
        if isinstance(mapping, DictConfig):
            mapping = OmegaConf.to_container(mapping, resolve=True)
        elif isinstance(mapping, dict):  # nodes of a composed config: plain values, so the schema sees every key
            mapping = {k: OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig) else v
                       for k, v in mapping.items()}
        merged = OmegaConf.merge(base, mapping or {})
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except ConfigError:
        raise
    except OmegaConfBaseException as e:
        raise settings_error(e, base) from None
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None
