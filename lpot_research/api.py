"""The Python API: `lpot_research.tune(model, calib_dataloader, ...)`. The Hydra entry calls it too."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from lpot_research.adaptors import FRAMEWORKS, make_adaptor
from lpot_research.adaptors.base import Adaptor
from lpot_research.cpu import cpu_info
from lpot_research.criterion import AccuracyCriterion
from lpot_research.errors import ConfigError
from lpot_research.metrics import TopK
from lpot_research.objectives import OBJECTIVES, Benchmark, Objective
from lpot_research.space import stable_hash
from lpot_research.strategies import BUILTIN as STRATEGIES
from lpot_research.strategies import Strategy, make_strategy
from lpot_research.tracking import Tracker
from lpot_research.tuner import ExitPolicy, QuantizationSettings, Tuner, TuneResult

log = logging.getLogger("lpot_research")

CONFIG_KEYS = ("quantization", "accuracy_criterion", "objective", "exit_policy", "random_seed", "benchmark",
               "threads", "tensorboard")


def _mapping(x: Any) -> dict[str, Any]:
    if x is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(x, DictConfig):
            return OmegaConf.to_container(x, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - omegaconf is a core dependency
        pass
    if isinstance(x, str | Path):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(OmegaConf.load(x), resolve=True)  # type: ignore[return-value]
    return dict(x)


def _build(cls: Any, value: Any, what: str) -> Any:
    """An instance of the dataclass `cls` from an instance, a mapping (a `_target_` key is ignored) or
    None (the defaults); unknown keys are an error naming them and the valid ones."""
    if isinstance(value, cls):
        return value
    d = _mapping(value)
    d.pop("_target_", None)
    valid = [f.name for f in dataclasses.fields(cls)]
    bad = [k for k in d if k not in valid]
    if bad:
        raise ConfigError(f"{what}.{bad[0]} is not a known key; valid keys: {valid}")
    return cls(**d)


def _describe(obj: Any) -> dict[str, Any]:
    """A stable description of a component (class + public constructor arguments) for run keys."""
    state = {k: repr(v) for k, v in sorted(vars(obj).items()) if not k.startswith("_")}
    return {"class": f"{type(obj).__module__}.{type(obj).__qualname__}", **state}


def tune(
    model: Any,
    calib_dataloader: Iterable[Any] | None,
    eval_dataloader: Iterable[Any] | None = None,
    metric: Any = None,
    eval_func: Callable[[Any], float] | None = None,
    config: Mapping[str, Any] | str | Path | None = None,
    *,
    framework: str | Adaptor = "pytorch",
    strategy: str | Strategy = "basic",
    accuracy_criterion: AccuracyCriterion | Mapping[str, Any] | None = None,
    objective: str | Objective | None = None,
    exit_policy: ExitPolicy | Mapping[str, Any] | None = None,
    output_dir: str | Path | None = None,
    example_inputs: Any = None,
    model_name: str = "model",
    bench_batch_size: int | None = None,
    tracker: Tracker | None = None,
    q_func: Callable[[Any], Any] | None = None,
) -> TuneResult:
    """Tune `model` until a quantized version meets the accuracy criterion.

    Accuracy comes from `eval_func(model) -> float`, or from `metric` over `eval_dataloader` (batches of
    (inputs, labels); the metric defaults to top-1). `config` holds the same tuning keys as
    conf/tune.yaml (quantization, accuracy_criterion, objective, exit_policy, random_seed, benchmark,
    threads, tensorboard); explicit keyword arguments win over it. Re-running with the same `output_dir`
    resumes. With `quantization.approach: quant_aware_training`, `q_func(model)` trains the model
    prepared with fake quantization in place (else the configured loop of quantization.qat runs
    on the calibration data). `tracker` (e.g. `lpot_research.tracking.WandbTracker()`) receives the baseline, every
    trial and the summary, and is finished whatever happens.
    """
    cfg = _mapping(config)
    bad = [k for k in cfg if k not in CONFIG_KEYS]
    if bad:
        raise ConfigError(f"config key {bad[0]!r} is not known; valid keys: {list(CONFIG_KEYS)}")
    seed = int(cfg.get("random_seed", 9527))
    threads = cfg.get("threads")

    if isinstance(framework, str):
        adaptor = make_adaptor(framework, threads=threads)
    elif isinstance(framework, Adaptor):
        adaptor = framework
    else:
        raise ConfigError(f"framework={framework!r} must be a name ({', '.join(FRAMEWORKS)}) or an Adaptor")
    if isinstance(strategy, str):
        strat = make_strategy(strategy, seed=seed)
    elif isinstance(strategy, Strategy):
        strat = strategy
    else:
        raise ConfigError(f"strategy={strategy!r} must be a name ({', '.join(STRATEGIES)}) or a Strategy")

    crit = _build(AccuracyCriterion, accuracy_criterion if accuracy_criterion is not None
                  else cfg.get("accuracy_criterion"), "accuracy_criterion")

    obj = objective if objective is not None else cfg.get("objective", "performance")
    obj_args: dict[str, Any] = {}
    if isinstance(obj, Mapping):  # {"name": "weighted", "weights": {...}}: the name's class with the rest
        obj_args = {k: v for k, v in _mapping(obj).items() if k != "name"}
        obj = obj.get("name", "performance")
    if isinstance(obj, str):
        if obj not in OBJECTIVES:
            raise ConfigError(f"unknown objective {obj!r}; valid objectives: {', '.join(OBJECTIVES)}")
        try:
            obj = OBJECTIVES[obj](**obj_args)
        except TypeError as e:
            raise ConfigError(f"objective {obj!r} does not take {sorted(obj_args)}: {e}") from None
    if not isinstance(obj, Objective):
        raise ConfigError(f"objective={obj!r} must be a name ({', '.join(OBJECTIVES)}) or an Objective")

    ex = _build(ExitPolicy, exit_policy if exit_policy is not None else cfg.get("exit_policy"), "exit_policy")

    q = QuantizationSettings.from_mapping(cfg.get("quantization"))
    if q.calib_dataloader is not None:  # described in YAML: it replaces the given one
        from lpot_research.data import build_dataloader

        calib_dataloader = build_dataloader(q.calib_dataloader, adaptor.layout)
    if calib_dataloader is None:
        raise ConfigError("give a calib_dataloader, or describe one in quantization.calibration.dataloader")
    if q_func is not None and (not callable(q_func) or q.approach != "quant_aware_training"):
        raise ConfigError(f"q_func={q_func!r} must be callable and is used only with quantization.approach="
                          f"quant_aware_training (the approach is {q.approach!r})")
    bench_d = _mapping(cfg.get("benchmark"))
    if bench_batch_size is not None and bench_d.get("batch_size") is None:
        bench_d["batch_size"] = bench_batch_size
    bench = Benchmark(**{k: v for k, v in bench_d.items() if v is not None})

    for what, loader in (("calib_dataloader", calib_dataloader), ("eval_dataloader", eval_dataloader)):
        if loader is not None and iter(loader) is loader:
            raise ConfigError(f"{what} is a one-shot iterator ({type(loader).__name__}); tuning reads the data "
                              "many times: pass a re-iterable (a list, a torch DataLoader, ...)")
    if eval_func is None and eval_dataloader is None:
        raise ConfigError("give either eval_func(model) -> float or an eval_dataloader (with a metric)")
    if eval_func is not None:
        if not callable(eval_func):
            raise ConfigError(f"eval_func={eval_func!r} is not callable")

        def evaluate(m: Any) -> float:
            return eval_func(m)
    else:
        metric = metric if metric is not None else TopK(1)

        def evaluate(m: Any) -> float:
            return adaptor.evaluate(m, eval_dataloader, metric)
    crit = crit.for_metric(metric)

    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover
        pass
    first = adaptor.take_inputs(calib_dataloader, 1, "calibration")  # also fails clearly on an empty dataloader
    if example_inputs is None:
        example_inputs = first
    prepared = adaptor.prepare(model, example_inputs)
    bench_inputs = adaptor.take_inputs(eval_dataloader if eval_dataloader is not None else calib_dataloader,
                                       bench.batch_size)

    out = Path(output_dir) if output_dir is not None else Path("lpot_outputs") / time.strftime("%Y%m%d-%H%M%S")
    names = {"strategy": strat.name, "framework": adaptor.name, "model": model_name}
    run = {  # what makes a run: its hash guards resume, and the tracker records it as the run's config
        "names": names,
        "adaptor": _describe(adaptor),
        "strategy": _describe(strat),
        "quantization": vars(q),
        "criterion": vars(crit),
        "benchmark": vars(bench),
        "objective": _describe(obj),  # with its arguments (e.g. weighted's weights)
        "seed": seed,
        # the CPU class decides kernels and quantizer settings (e.g. 7-bit INT8 without VNNI): trials
        # measured on another class are not this run's
        "cpu": cpu_info().isa_class,
        "q_func": getattr(q_func, "__qualname__", repr(q_func)) if q_func is not None else None,
    }
    run_key = stable_hash(run)
    tensorboard = cfg.get("tensorboard", False)
    if not isinstance(tensorboard, bool):
        raise ConfigError(f"tensorboard={tensorboard!r} must be true or false")
    tracker = tracker if tracker is not None else Tracker()
    if not isinstance(tracker, Tracker):
        raise ConfigError(f"tracker={tracker!r} must be an lpot_research.tracking.Tracker")
    tuner = Tuner(
        adaptor=adaptor, strategy=strat, model=prepared, calib_dataloader=calib_dataloader, evaluate=evaluate,
        criterion=crit, objective=obj, exit_policy=ex, quantization=q, bench=bench, bench_inputs=bench_inputs,
        example_inputs=example_inputs, output_dir=out, run_key=run_key, names=names, tracker=tracker,
        tensorboard=tensorboard, train_func=q_func,
    )
    tracker.start(names, {**run, "exit_policy": vars(ex), "threads": threads, "run_key": run_key}, out)
    failed = True
    try:
        result = tuner.run()
        failed = False
        return result
    finally:
        tracker.finish(failed=failed)
