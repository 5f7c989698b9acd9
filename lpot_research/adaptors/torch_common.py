"""What the two PyTorch back ends share (lpot_research.adaptors.pytorch_backends picks one): tensors from a
dataloader, the BF16 test, the QAT training loop, fingerprints, running and measuring an nn.Module."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from lpot_research.adaptors.base import Adaptor, as_tuple, batch_len, limited_batches
from lpot_research.core.cpu import cpu_info
from lpot_research.quant.qat import QAT

log = logging.getLogger(__name__)

BF16_MISSING = "BF16 needs a CPU with AVX512-BF16 or AMX-BF16 (slower than FP32 when emulated)"
LOSSES = {"cross_entropy": nn.functional.cross_entropy, "mse": nn.functional.mse_loss}


def bf16_supported() -> bool:
    """BF16 is offered as a fallback only where the CPU computes it natively (otherwise it is
    emulated and slower than FP32)."""
    return cpu_info().bf16 and torch.backends.mkldnn.is_available()


def torch_args(inputs: Any) -> tuple[torch.Tensor, ...]:
    """Model arguments (base.as_tuple) as tensors: numpy arrays from a dataloader are converted."""
    return tuple(x if isinstance(x, torch.Tensor) else torch.as_tensor(x) for x in as_tuple(inputs))


PROFILED_RUN = "lpot_profiled_run"  # torch.profiler range around each profiled call
OP_RANGE = "lpot_op:"  # torch.profiler range around each call of a labelled module (+ its name)


def profile_runs(run: Callable[[], Any], runs: int, attribute: Callable[[list[Any]], dict[str, float]],
                 warmup: int = 2) -> tuple[dict[str, float], float]:
    """Per op, the median over `runs` calls of `run` recorded by torch.profiler of the milliseconds
    `attribute` gives it from the events of one call (in start order), and the median of the rest (the
    call's time less its ops')."""
    import statistics

    for _ in range(warmup):
        run()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            with torch.profiler.record_function(PROFILED_RUN):
                run()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    per_op: dict[str, list[float]] = {}
    rest: list[float] = []
    for m in (e for e in events if e.name == PROFILED_RUN):
        lo, hi = m.time_range.start, m.time_range.end
        this = attribute([e for e in events if e is not m and lo <= e.time_range.start and e.time_range.end <= hi])
        for name, ms in this.items():
            per_op.setdefault(name, []).append(ms)
        rest.append(m.cpu_time_total / 1e3 - sum(this.values()))
    return {o: statistics.median(v) for o, v in per_op.items()}, statistics.median(rest) if rest else 0.0


@contextlib.contextmanager
def labelled_modules(model: nn.Module, names: Iterable[str]) -> Iterator[None]:
    """Each call of the modules of `model` named in `names` inside a torch.profiler range OP_RANGE + its
    name (forward pre- and post-hooks), for `profile_runs` (a name with no module gets no range)."""
    modules = dict(model.named_modules())
    handles, open_ranges = [], []

    for name in (n for n in names if n in modules):
        def enter(_m: nn.Module, _args: Any, name: str = name) -> None:
            r = torch.profiler.record_function(OP_RANGE + name)
            r.__enter__()
            open_ranges.append(r)

        def leave(_m: nn.Module, _args: Any, _out: Any) -> None:
            open_ranges.pop().__exit__(None, None, None)

        handles += [modules[name].register_forward_pre_hook(enter), modules[name].register_forward_hook(leave)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def labelled_ms(events: list[Any]) -> dict[str, float]:
    """`profile_runs`' attribution for `labelled_modules`: each module's ranges (its calls add up)."""
    out: dict[str, float] = {}
    for e in events:
        if e.name.startswith(OP_RANGE):
            name = e.name[len(OP_RANGE):]
            out[name] = out.get(name, 0.0) + e.cpu_time_total / 1e3
    return out


class TorchAdaptor(Adaptor):
    """The parts of a PyTorch back end that do not depend on how it quantizes."""

    name = "pytorch"

    def __init__(self, threads: int | None = None, reduce_range: bool | None = None) -> None:
        self.threads = threads
        self.reduce_range = reduce_range  # None: decided by the CPU (the back end's range_rule)
        self._train_func: Any = None
        self._qat: dict[str, Any] = dataclasses.asdict(QAT())

    def set_training(self, train_func: Any, settings: dict[str, Any]) -> None:
        """The user's train_func (or None) and the configured loop's settings (quantization.qat, checked by
        lpot_research.quant.qat.QAT)."""
        self._train_func, self._qat = train_func, dataclasses.asdict(QAT(**settings))

    def _set_threads(self) -> None:
        self._check_reduce_range()
        if self.threads:
            torch.set_num_threads(int(self.threads))

    def _train(self, prepared: nn.Module, loader: Iterable[Any]) -> None:
        """Quantization-aware training of a model prepared with fake quantization: the user's
        train_func, or `epochs` of SGD over the (inputs, labels) batches of the calibration data."""
        if self._train_func is not None:
            self._train_func(prepared)
            return
        qat = self._qat
        torch.manual_seed(int(qat["seed"]))  # the same trial gives the same model (resume, repeats)
        opt = torch.optim.SGD(prepared.parameters(), lr=float(qat["lr"]), momentum=float(qat["momentum"]))
        loss_fn = LOSSES[qat["loss"]]
        steps = 0
        for _ in range(qat["epochs"]):
            for inputs, labels in loader:
                opt.zero_grad()
                out = prepared(*torch_args(inputs))
                loss_fn(out, labels if isinstance(labels, torch.Tensor) else torch.as_tensor(labels)).backward()
                opt.step()
                steps += 1
        log.debug("quantization-aware training: %d step(s) of SGD (lr %g)", steps, qat["lr"])

    @staticmethod
    def _observers(prepared: nn.Module) -> dict[str, nn.Module]:
        """The observers of a prepared graph (FX or PT2E), keyed by what they observe: the graph node
        (named by the traced or exported model, so the same whatever the configuration) and the
        observer's class (minmax / kl / histogram keep different statistics)."""
        modules = dict(prepared.named_modules())
        out = {}
        for node in prepared.graph.nodes:
            mod = modules.get(node.target) if node.op == "call_module" else None
            if mod is not None and node.args and hasattr(mod, "calculate_qparams"):
                observed = node.args[0]
                out[f"{getattr(observed, 'name', observed)}|{type(mod).__qualname__}"] = mod
        return out

    @staticmethod
    def _feed(m: nn.Module, loader: Iterable[Any], sampling_size: int) -> None:
        """Run the first `sampling_size` calibration samples through `m` (its observers record them)."""
        seen = 0
        for inputs in limited_batches(loader, sampling_size, "calibration"):
            m(*torch_args(inputs))
            seen += batch_len(inputs)
        if seen < sampling_size:
            log.debug("calibration: the dataloader gave %d samples, fewer than sampling_size=%d", seen, sampling_size)

    @torch.inference_mode()
    def _calibrate_cached(self, model: nn.Module, prepared: nn.Module, loader: Iterable[Any], sampling_size: int,
                          prepare_all: Callable[[str], nn.Module | None]) -> None:
        """Fill the prepared model's observers from the per-run cache, keyed by (model, sampling size) and
        observed tensor: calibration observes FP32 activations, the same for every configuration. Each
        observer kind missing is computed in one pass over `prepare_all(kind)`, the model with *every*
        op observed by that kind, so a later configuration quantizing other ops with it costs no pass."""
        observers = self._observers(prepared)

        def compute(missing: list[str]) -> dict[str, Any]:
            states: dict[str, Any] = {}
            for kind in {k.rsplit("|", 1)[1] for k in missing}:
                full = prepare_all(kind)
                if full is None:
                    continue
                self._feed(full, loader, sampling_size)
                states.update({k: copy.deepcopy(o.state_dict()) for k, o in self._observers(full).items()
                               if k.endswith("|" + kind)})
            if any(k not in states for k in missing):  # placements only this configuration has
                self._feed(prepared, loader, sampling_size)
                states.update({k: copy.deepcopy(o.state_dict()) for k, o in observers.items()})
            return states

        states = self.calibration.get_many((self.fingerprint(model), sampling_size), list(observers), compute)
        for k, obs in observers.items():
            obs.load_state_dict(states[k])

    def fingerprint(self, model: Any) -> str:
        """The base's hash, remembered per model object (calibration keys ask for it every trial)."""
        cached = self.__dict__.setdefault("_fingerprints", {}).get(id(model))
        if cached is not None and cached[0] is model:
            return cached[1]
        key = super().fingerprint(model)
        self.__dict__["_fingerprints"][id(model)] = (model, key)
        return key

    def _content(self, model: nn.Module) -> Iterator[bytes]:
        """The model's class and every parameter and buffer (names, dtypes, shapes, values)."""
        yield f"{type(model).__module__}.{type(model).__qualname__}".encode()
        yield self._structure(model)
        for name, t in model.state_dict().items():
            t = t.detach().cpu().contiguous()
            yield f"{name}|{t.dtype}|{tuple(t.shape)}".encode()
            yield t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""

    def _structure(self, model: nn.Module) -> bytes:
        """Hook: bytes of what the model computes beyond its tensors (e.g. an exported graph's code)."""
        return b""

    @torch.inference_mode()
    def predict(self, model: nn.Module, inputs: Any) -> Any:
        return model(*torch_args(inputs))

    def _footprint_run(self, model: nn.Module, inputs: Any) -> contextlib.AbstractContextManager[Callable[[], Any]]:
        return contextlib.nullcontext(lambda: self.predict(copy.deepcopy(model), inputs))

    def size_bytes(self, model: nn.Module) -> int:
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        return buf.tell()

    def take_inputs(self, loader: Iterable[Any], n: int, what: str = "benchmark") -> Any:
        """The first `n` input samples of a dataloader of (inputs, labels), as one batch."""
        parts = [torch_args(b) for b in limited_batches(loader, n, what)]  # a dict's values, in its order
        joined = tuple(torch.cat([p[i] for p in parts]) for i in range(len(parts[0])))
        return joined[0] if len(joined) == 1 else joined
