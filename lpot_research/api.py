"""The Python API: `lpot_research.tune(model, calib_dataloader, ...)`. The Hydra entry calls it too."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from lpot_research.adaptors import FRAMEWORKS, make_adaptor
from lpot_research.adaptors.base import Adaptor, numpy_inputs
from lpot_research.config import ExitPolicy, Settings, load_settings
from lpot_research.core.cpu import cpu_info
from lpot_research.core.errors import ConfigError, LpotError
from lpot_research.measure.metrics import TopK
from lpot_research.measure.objectives import OBJECTIVES, Objective
from lpot_research.quant.criterion import AccuracyCriterion
from lpot_research.quant.space import stable_hash
from lpot_research.run.callbacks import CALLBACK_EVENTS, Callback, ProgressLog, TensorBoardCallback, TrackerCallback
from lpot_research.run.evaluation import Evaluator, check_metric
from lpot_research.run.history import History
from lpot_research.run.inspector import Inspector
from lpot_research.run.lock import RunLock
from lpot_research.run.tracking import Tracker
from lpot_research.run.trial import TrialRunner, one_line
from lpot_research.run.tuner import Tuner, TuneResult
from lpot_research.strategies import STRATEGIES, Strategy, make_strategy

log = logging.getLogger("lpot_research")


def _mapping(x: Any) -> Any:
    if x is None:
        return {}
    if isinstance(x, str | Path):
        from omegaconf import OmegaConf

        p = Path(x)
        if not p.is_file():
            raise ConfigError(f"config={str(x)!r} is not a file; give a mapping of tuning keys or a YAML file")
        return OmegaConf.load(p)
    if not isinstance(x, Mapping):
        raise ConfigError(f"config={x!r:.80} ({type(x).__name__}) is not a mapping of tuning keys; give one (e.g. "
                          "{'exit_policy': {'max_trials': 20}}), a YAML file or an lpot_research.config.Settings")
    return x


def _describe(obj: Any) -> dict[str, Any]:
    """A stable description of a component (class + public constructor arguments) for run keys."""
    state = {k: repr(v) for k, v in sorted(vars(obj).items()) if not k.startswith("_")}
    return {"class": f"{type(obj).__module__}.{type(obj).__qualname__}", **state}


def _objective(obj: Any) -> Objective:
    args: dict[str, Any] = {}
    if isinstance(obj, Mapping):  # {"name": "weighted", "weights": {...}}: the name's class with the rest
        args = {k: v for k, v in obj.items() if k != "name"}
        obj = obj.get("name", "performance")
    if isinstance(obj, str):
        if obj not in OBJECTIVES:
            raise ConfigError(f"unknown objective {obj!r}; valid objectives: {', '.join(OBJECTIVES)}")
        try:
            obj = OBJECTIVES[obj](**args)
        except TypeError as e:
            raise ConfigError(f"objective {obj!r} does not take {sorted(args)}: {e}") from None
    if not isinstance(obj, Objective):
        raise ConfigError(f"objective={obj!r} must be a name ({', '.join(OBJECTIVES)}) or an Objective")
    return obj


def _default_logging() -> None:
    """The API prints its progress like the CLI unless the application configured logging itself."""
    if not logging.getLogger().handlers and not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        if log.level == logging.NOTSET:
            log.setLevel(logging.INFO)


def _output_dir(output_dir: str | Path | None, resume: bool) -> Path:
    """The run dir (a new one under lpot_outputs/ by default); checked by `_check_run_dir` under its lock."""
    if output_dir is None:
        if resume:
            raise ConfigError("resume=True needs the output_dir of the run to continue")
        out = Path("lpot_outputs") / time.strftime("%Y%m%d-%H%M%S")
        while out.exists():  # two runs in the same second
            out = out.with_name(out.name + "_")
        return out
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir={str(out)!r} is a file, not a directory")
    return out


def _check_run_dir(out: Path, resume: bool, resume_hint: str) -> None:
    """A new run needs a dir that holds none, a resume one that does (asked while holding its RunLock, so
    that two processes cannot both find it free); `resume_hint`: the command that continues the run there."""
    if resume and not History.exists(out):
        raise ConfigError(f"resume: {str(out)!r} holds no run to continue (no {History.FILENAME}); start a new run "
                          "without resume, or give the directory of the run to continue")
    if not resume and History.exists(out):
        try:
            held = f"{len(History.read(out).trials)} trial(s)"
        except LpotError as e:  # a damaged record is still a run not to overwrite
            held = f"its record does not read: {e}"
        raise ConfigError(f"{str(out)!r} already holds a run ({held}); continue it with: {resume_hint}; or start "
                          "this run in another directory")


def fingerprint_inputs(inputs: Any) -> str:
    h = hashlib.sha256()
    for a in numpy_inputs(inputs):
        h.update(f"{a.dtype}|{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def tune(
    model: Any,
    calib_dataloader: Iterable[Any] | None,
    eval_dataloader: Iterable[Any] | None = None,
    metric: Any = None,
    eval_func: Callable[[Any], float] | None = None,
    config: Mapping[str, Any] | Settings | str | Path | None = None,
    *,
    framework: str | Adaptor = "pytorch",
    strategy: str | Strategy = "basic",
    accuracy_criterion: AccuracyCriterion | Mapping[str, Any] | None = None,
    objective: str | Objective | Mapping[str, Any] | None = None,
    exit_policy: ExitPolicy | Mapping[str, Any] | None = None,
    output_dir: str | Path | None = None,
    resume: bool = False,
    example_inputs: Any = None,
    model_name: str = "model",
    bench_batch_size: int | None = None,
    tracker: Tracker | None = None,
    callbacks: list[Callback] | None = None,
    q_func: Callable[[Any], Any] | None = None,
    resume_hint: str = "",
) -> TuneResult:
    """Tune `model` until a quantized version meets the accuracy criterion.

    Accuracy comes from `eval_func(model) -> float`, or from `metric` over `eval_dataloader` (batches of
    (inputs, labels); the metric defaults to top-1). `config` holds the same tuning keys as
    conf/tune.yaml (lpot_research.config.Settings: quantization, accuracy_criterion, exit_policy,
    benchmark, evaluation, parallel, random_seed, threads, tensorboard); explicit keyword arguments win
    over it. `config={"parallel": {"workers": 4}}` evaluates up to 4 trials at once on worker processes
    (the model, data and adaptor must pickle: lpot_research.run.scheduler).
    A new run needs a new (or empty) `output_dir`; `resume=True` continues the run in it. With
    `quantization.approach: quant_aware_training`, `q_func(model)` trains the model prepared with fake
    quantization in place (else the configured loop of quantization.qat runs on the calibration data).
    `tracker` (e.g. `lpot_research.run.tracking.WandbTracker()`) and `callbacks` (lpot_research.run.callbacks.Callback)
    see the run as it goes, through a read-only `RunView`.
    """
    settings, crit, ex = _settings(config, accuracy_criterion, exit_policy)
    out = _output_dir(output_dir, resume)
    resume_hint = resume_hint or f"lpot_research.tune(..., output_dir={str(out)!r}, resume=True)"
    with RunLock(out):  # held to the run's end: one writer per run dir
        _check_run_dir(out, resume, resume_hint)
        _default_logging()
        adaptor, strat, obj = _components(framework, strategy, objective, settings)
        calib_dataloader, metric = _check_inputs(adaptor, settings, calib_dataloader, eval_dataloader, metric,
                                                 eval_func, q_func)
        prepared, example_inputs = _sanity_run(adaptor, model, calib_dataloader, example_inputs,
                                               settings.quantization, q_func, settings.random_seed)
        bench, bench_inputs = _benchmark(adaptor, settings, bench_batch_size, eval_dataloader, calib_dataloader)
        evaluator = Evaluator(adaptor, eval_dataloader, metric, eval_func, settings.evaluation.ranking_samples,
                              settings.evaluation.early_stop)
        runner = TrialRunner(adaptor, prepared, calib_dataloader, example_inputs, evaluator,
                             crit.for_metric(metric), obj, bench, bench_inputs)
        names = {"strategy": strat.name, "framework": adaptor.name, "model": model_name}
        description = _describe_run(names, runner, strat, settings, q_func)
        history = History(out, stable_hash(description), description)
        watchers = _watchers(tracker, callbacks, {**description, "exit_policy": dataclasses.asdict(ex),
                                                  "threads": settings.threads}, settings.tensorboard, out)
        return _run(_tuner(runner, strat, history, settings, ex, names, watchers, out, resume_hint), watchers)


def _benchmark(adaptor: Adaptor, settings: Settings, bench_batch_size: int | None, eval_dataloader: Any,
               calib_dataloader: Any) -> tuple[Any, Any]:
    """The benchmark settings and the batch it times: evaluation samples, else calibration ones."""
    bench = settings.benchmark.build(bench_batch_size if bench_batch_size is not None else 32)
    if eval_dataloader is not None:
        return bench, adaptor.take_inputs(eval_dataloader, bench.batch_size, "evaluation")
    return bench, adaptor.take_inputs(calib_dataloader, bench.batch_size, "calibration")


def _settings(config: Mapping[str, Any] | Settings | str | Path | None,
              accuracy_criterion: AccuracyCriterion | Mapping[str, Any] | None,
              exit_policy: ExitPolicy | Mapping[str, Any] | None) -> tuple[Settings, AccuracyCriterion, ExitPolicy]:
    """The run's settings: `config` with the keyword arguments over it (a mapping is merged and validated
    with the rest; an AccuracyCriterion or ExitPolicy object is taken as it is)."""
    settings = config if isinstance(config, Settings) else load_settings(_mapping(config))
    if accuracy_criterion is not None and not isinstance(accuracy_criterion, AccuracyCriterion):
        settings = load_settings({**_asdict(settings), "accuracy_criterion": dict(accuracy_criterion)})
    if exit_policy is not None and not isinstance(exit_policy, ExitPolicy):
        settings = load_settings({**_asdict(settings), "exit_policy": dict(exit_policy)})
    crit = accuracy_criterion if isinstance(accuracy_criterion, AccuracyCriterion) else settings.accuracy_criterion
    ex = exit_policy if isinstance(exit_policy, ExitPolicy) else settings.exit_policy
    return settings, crit, ex


def _components(framework: str | Adaptor, strategy: str | Strategy, objective: Any, settings: Settings
                ) -> tuple[Adaptor, Strategy, Objective]:
    """The adaptor, strategy and objective, built from their names or taken as given."""
    if isinstance(framework, str):
        adaptor = make_adaptor(framework, threads=settings.threads)
    elif isinstance(framework, Adaptor):
        adaptor = framework
    else:
        raise ConfigError(f"framework={framework!r} must be a name ({', '.join(FRAMEWORKS)}) or an Adaptor")
    if isinstance(strategy, str):
        strat = make_strategy(strategy, seed=settings.random_seed)
    elif isinstance(strategy, Strategy):
        strat = strategy
    else:
        raise ConfigError(f"strategy={strategy!r} must be a name ({', '.join(STRATEGIES)}) or a Strategy")
    return adaptor, strat, _objective(objective if objective is not None else "performance")


def _check_inputs(adaptor: Adaptor, settings: Settings, calib_dataloader: Iterable[Any] | None,
                  eval_dataloader: Iterable[Any] | None, metric: Any, eval_func: Callable[[Any], float] | None,
                  q_func: Callable[[Any], Any] | None) -> tuple[Iterable[Any], Any]:
    """The calibration data (a YAML description replaces the given loader) and the metric (top-1 by
    default), after every check that needs no model run: each bad input is one clear error."""
    q = settings.quantization
    if q.calibration.dataloader is not None:  # described in YAML: it replaces the given one
        from lpot_research.models.data import build_dataloader

        calib_dataloader = build_dataloader(dict(q.calibration.dataloader), adaptor.layout)
    if calib_dataloader is None:
        raise ConfigError("give a calib_dataloader, or describe one in quantization.calibration.dataloader")
    if q_func is not None and (not callable(q_func) or q.approach != "quant_aware_training"):
        raise ConfigError(f"q_func={q_func!r} must be callable and is used only with quantization.approach="
                          f"quant_aware_training (the approach is {q.approach!r})")
    for what, loader in (("calib_dataloader", calib_dataloader), ("eval_dataloader", eval_dataloader)):
        if loader is not None and iter(loader) is loader:
            raise ConfigError(f"{what} is a one-shot iterator ({type(loader).__name__}); tuning reads the data "
                              "many times: pass a re-iterable (a list, a torch DataLoader, ...)")
    if eval_func is None and eval_dataloader is None:
        raise ConfigError("give either eval_func(model) -> float or an eval_dataloader (with a metric)")
    if eval_func is not None and not callable(eval_func):
        raise ConfigError(f"eval_func={eval_func!r} is not callable")
    if eval_func is not None and metric is not None:
        raise ConfigError(f"give either eval_func(model) -> float or a metric ({type(metric).__name__}), not both: "
                          "eval_func decides alone and the metric would be ignored")
    if eval_func is None:
        metric = metric if metric is not None else TopK(1)
        check_metric(metric)
    act = q.model_wise.activation
    ignored = [f"{k}={getattr(act, k)}" for k in ("scheme", "granularity", "algorithm") if getattr(act, k) is not None]
    if q.approach == "post_training_dynamic_quant" and ignored:
        log.warning("quantization.model_wise.activation.%s does nothing with post_training_dynamic_quant: activation "
                    "ranges are computed per batch at run time (no calibration)", ", ".join(ignored))
    if settings.tensorboard and not _installed("tensorboardX"):
        raise ConfigError("tensorboard=true needs tensorboardX (pip install 'lpot-research[tensorboard]')")
    return calib_dataloader, metric


def _sanity_run(adaptor: Adaptor, model: Any, calib_dataloader: Iterable[Any], example_inputs: Any, q: Any,
                q_func: Callable[[Any], Any] | None, seed: int) -> tuple[Any, Any]:
    """The prepared model and the example inputs (the first calibration batch unless given), once the
    model has run on that batch: a model that does not run on the data fails here, in one line, not in
    every trial."""
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:
        pass
    adaptor.check_approach(q.approach)
    if q.approach == "quant_aware_training":
        adaptor.set_training(q_func, dataclasses.asdict(q.qat))
    first = adaptor.take_inputs(calib_dataloader, 1, "calibration")  # also fails clearly on an empty dataloader
    if example_inputs is None:
        example_inputs = first
    prepared = adaptor.prepare(model, example_inputs)
    try:
        adaptor.predict(prepared, first)
    except Exception as e:  # noqa: BLE001 - any framework's shape/dtype error
        from lpot_research.adaptors.base import describe_inputs
        from lpot_research.core.errors import DataError

        raise DataError(f"the model does not run on the calibration data's inputs ({describe_inputs(first)}): "
                        f"{one_line(e)}") from None
    return prepared, example_inputs


def _describe_run(names: dict[str, str], runner: TrialRunner, strat: Strategy, settings: Settings,
                  q_func: Callable[[Any], Any] | None) -> dict[str, Any]:
    """What makes a run: its hash guards resume, and the tracker records it as the run's config."""
    return {
        "names": names,
        "model": runner.adaptor.fingerprint(runner.model),
        "data": {"benchmark_inputs": fingerprint_inputs(runner.bench_inputs), "evaluation": runner.evaluator.kind},
        "adaptor": _describe(runner.adaptor),
        "strategy": _describe(strat),
        "quantization": _quantization(settings),
        "criterion": dataclasses.asdict(runner.criterion),
        "benchmark": dataclasses.asdict(runner.bench),
        "ranking_samples": settings.evaluation.ranking_samples,
        "objective": _describe(runner.objective),  # with its arguments (e.g. weighted's weights)
        "seed": settings.random_seed,
        # the CPU class decides kernels and quantizer settings (e.g. 7-bit INT8 without VNNI): trials
        # measured on another class are not this run's
        "cpu": cpu_info().isa_class,
        "q_func": getattr(q_func, "__qualname__", repr(q_func)) if q_func is not None else None,
    }


def _quantization(settings: Settings) -> dict[str, Any]:
    """The quantization settings of a run's description; recipes only when one is tuned (a run without them
    keeps the key it had before recipes existed)."""
    q = dataclasses.asdict(settings.quantization)
    if not any(q["recipes"].values()):
        del q["recipes"]
    return q


def _watchers(tracker: Tracker | None, callbacks: list[Callback] | None, tracked: dict[str, Any], tensorboard: bool,
              out: Path) -> list[Callback]:
    """Whatever watches the run: the progress log, then the tracker (given `tracked` as the run's config),
    TensorBoard and the caller's callbacks."""
    watchers: list[Callback] = [ProgressLog()]
    if tracker is not None:
        if not isinstance(tracker, Tracker):
            raise ConfigError(f"tracker={tracker!r} must be an lpot_research.run.tracking.Tracker")
        watchers.append(TrackerCallback(tracker, tracked, out))
    if tensorboard:
        watchers.append(TensorBoardCallback(out / "tensorboard"))
    if callbacks is None:
        return watchers
    if isinstance(callbacks, Callback) or not isinstance(callbacks, list | tuple):
        raise ConfigError(f"callbacks={callbacks!r:.80} must be a list of lpot_research.run.callbacks.Callback")
    for i, cb in enumerate(callbacks):
        missing = [m for m in CALLBACK_EVENTS if not callable(getattr(cb, m, None))]
        if missing:
            raise ConfigError(f"callbacks[{i}]={cb!r:.80} is not a Callback: it lacks {', '.join(missing)} "
                              "(subclass lpot_research.run.callbacks.Callback and override what you need)")
    return watchers + list(callbacks)


def _tuner(runner: TrialRunner, strat: Strategy, history: History, settings: Settings, ex: ExitPolicy,
           names: dict[str, str], watchers: list[Callback], out: Path, resume_hint: str) -> Tuner:
    """The tuner, wired to the parts of this run."""
    q, adaptor = settings.quantization, runner.adaptor
    return Tuner(adaptor=adaptor, strategy=strat, runner=runner,
                 inspector=Inspector(adaptor, runner.model, runner.calib, runner.example_inputs, history),
                 history=history,
                 space_settings={"approach": q.approach, "sampling_sizes": _sampling_sizes(adaptor, q, runner.calib),
                                 "model_wise": _asdict(q.model_wise), "op_wise": q.op_wise,
                                 "recipes": _asdict(q.recipes)},
                 criterion=runner.criterion, objective=runner.objective, exit=ex, example_inputs=runner.example_inputs,
                 out=out, names=names, callbacks=watchers, resume_hint=resume_hint, parallel=settings.parallel,
                 threads=settings.threads)


def _run(tuner: Tuner, watchers: list[Callback]) -> TuneResult:
    """Run the tuner; every watcher is closed, told whether the run completed (an interrupted or failed
    run did not: its W&B run says so)."""
    failed = True
    try:
        result = tuner.run()
        failed = result.interrupted
        return result
    finally:
        for cb in watchers:
            cb.close(failed)


def _asdict(x: Any) -> dict[str, Any]:
    return dataclasses.asdict(x) if dataclasses.is_dataclass(x) else dict(x)


def _installed(module: str) -> bool:
    from lpot_research.adaptors import installed

    return installed(module)


def _sampling_sizes(adaptor: Adaptor, q: Any, calib: Iterable[Any]) -> Any:
    """The sampling sizes worth trying: one for dynamic quantization (it does not calibrate), and none
    beyond what the calibration data holds (more would repeat the same model)."""
    sizes = q.sampling_sizes
    if not sizes or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
        return q.calibration.sampling_size  # build_space reports the bad value
    if q.approach == "post_training_dynamic_quant":
        if len(sizes) > 1:
            log.info("dynamic quantization does not calibrate: sampling_size %s reduced to %d", sizes, sizes[0])
        return [sizes[0]]
    available = adaptor.count_samples(calib, max(sizes))
    if available < max(sizes):
        clamped = list(dict.fromkeys(min(s, available) for s in sizes))
        log.warning("the calibration dataloader holds %d sample(s): sampling_size %s becomes %s", available, sizes,
                    clamped)
        return clamped
    return sizes
