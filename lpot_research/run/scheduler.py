"""Running a strategy's proposals as trials: one at a time in this process, or up to `parallel.workers`
at once on worker processes (joblib's loky on this machine, or a dask.distributed cluster).

What a parallel run keeps of a serial one:
- Results are taken in proposal order, whatever order they finish in: trial numbers, the history, the
  callbacks and what the strategy learns are a serial run's, so for a given seed the same
  configurations are evaluated and the same best is found whatever the number of workers.
- A trial that finishes before an earlier one is written to the history at once (an `ahead` record):
  a killed run loses no finished trial, and its resume takes it from there instead of running it again.
- Workers run a trial's accuracy phase (quantize, evaluate, size). Latency is measured in this process
  once nothing is in flight (at the end of a batch), so no benchmark shares the cores with a trial. A
  serial run measures the same way: the record is written, then a passing trial is measured
  (`TrialRunner.measure_recorded`), so both write the same lines and measure the same trials.
- Trials that start before the evaluation order is known (the first ones of a run scored per sample)
  are evaluated whole and send their scores back: the first on record sets the order, and each one's
  ranking accuracy is computed under it, as in a serial run.
- basic's per-op sensitivity (lpot_research.run.inspector) is computed on the workers too, a share each.

A trial that kills its worker (a segfault in a kernel, the OOM killer) is recorded as failed ("killed by
signal 11 (SIGSEGV) during evaluate", lpot_research.run.crashes), the workers are replaced and the run
goes on; when which of the trials in flight did it is not known (no fatal signal was recorded), they run
again one at a time. `parallel.isolate=true` runs a serial run's trials this way, on one worker.

Each worker receives the run's trial runner (model, data, adaptor) pickled once, and builds nothing
else; a model that cannot be pickled is a clear error before any trial.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lpot_research.core.deadline import TrialTimeout, deadline
from lpot_research.core.errors import ConfigError, interrupt_reason
from lpot_research.quant.space import TuneConfig
from lpot_research.run.crashes import (
    CRASHES_TO_FAIL,
    FAULTS_LOG,
    FaultLog,
    WorkerMarks,
    dead_worker_trials,
    fatal_signals,
    pool_exit_signals,
    signal_text,
)
from lpot_research.run.history import EVAL_ORDER, FP32_SCORES, SCORES, History, TrialRecord, analysis_key
from lpot_research.run.policy import ExitPolicy, Parallel
from lpot_research.run.trial import TrialRunner, one_line

log = logging.getLogger("lpot_research")
MAX_CONSECUTIVE_REPEATS = 10_000  # a strategy re-proposing only evaluated configs this long is stuck
LOOKAHEAD = 4  # a parallel batch runs at most this many times `workers` positions ahead of the oldest unfinished


class Stop(Exception):  # noqa: N818 - control flow, not an error
    """Ends the run; its message is the stop reason."""


# ------------------------------------------------------------------------------------------ the worker side
_RUNNERS: dict[str, TrialRunner] = {}
_MARKS: list[WorkerMarks] = []  # this worker's trace (loky workers)


def _load(token: str, payload: bytes) -> TrialRunner:
    import cloudpickle

    runner = _RUNNERS.get(token)
    if runner is None:
        logging.getLogger("lpot_research").setLevel(logging.ERROR)  # this process reports through results
        runner = _RUNNERS[token] = cloudpickle.loads(payload)
        runner.adaptor.setup_process()
    return runner


def _die_with(parent: int) -> None:
    """End this worker when the tuning process `parent` ends, even by SIGKILL (an orphaned worker would
    hold its copy of the model forever): the kernel's parent-death signal on Linux, and a watchdog."""
    import signal
    import threading

    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="lpot-parent-watch", daemon=True).start()


def _init_worker(token: str, payload: bytes, parent: int, share: str | None, marks: str) -> None:
    _die_with(parent)
    _MARKS.append(WorkerMarks(marks))
    runner = _load(token, payload)
    runner.adaptor.calibration.share = share
    runner.on_phase = _MARKS[0].phase


@dataclass(frozen=True)
class Task:
    n: int  # provisional trial number (for messages)
    config: dict[str, Any]
    note: str
    baseline: dict[str, Any]
    order: list[int] | None  # the evaluation order (None until set)
    seconds: float | None  # what is left of the run's time budget


def _runner(token: str, payload: bytes | None) -> TrialRunner:
    return _RUNNERS[token] if payload is None else _load(token, payload)


def ready(token: str, payload: bytes | None) -> bool:
    """Nothing: it starts a worker (which loads the run) while the tuning process works."""
    return _runner(token, payload) is not None


def run_distances(token: str, payload: bytes | None, base: dict[str, Any], names: list[str]) -> dict[str, float]:
    """Per-op sensitivity distances (lpot_research.run.inspector) of `names` in a worker."""
    from lpot_research.run.inspector import Inspector

    r = _runner(token, payload)
    return Inspector(r.adaptor, r.model, r.calib, r.example_inputs, None).distances(TuneConfig.from_dict(base), names)


def run_task(token: str, payload: bytes | None, task: Task) -> tuple[str, Any, Any]:
    """A trial's accuracy phase in a worker: ("ok", record, scores) or ("stopped", reason, None); the
    per-sample scores only when the evaluation order was not known yet."""
    import numpy as np

    runner = _runner(token, payload)
    runner.baseline = task.baseline
    ev = runner.evaluator
    if task.order is not None and (ev.order is None or not np.array_equal(ev.order, task.order)):
        ev.set_order(task.order)
    try:
        with deadline(task.seconds):
            rec, _, outcome = runner.run(TuneConfig.from_dict(task.config, task.note), task.n, 0.0)
    except TrialTimeout:
        return "stopped", "timeout", None
    except KeyboardInterrupt as e:
        return "stopped", interrupt_reason(e), None
    finally:
        if _MARKS:
            _MARKS[0].done()
    return "ok", rec, outcome.scores if task.order is None and outcome is not None else None


# ------------------------------------------------------------------------------------------ pools
class Pool:
    """Worker processes behind a concurrent.futures executor; the run's runner is sent once to each."""

    def __init__(self, runner: TrialRunner, workers: int, threads: int) -> None:
        import cloudpickle

        try:
            self.payload = cloudpickle.dumps(runner)
        except Exception as e:  # noqa: BLE001 - whatever the framework's objects raise
            raise ConfigError(f"parallel.workers={workers}: the run (model, data, adaptor) cannot be sent to worker "
                              f"processes: {one_line(e)}; use parallel.workers=1") from None
        self.token = hashlib.sha256(self.payload).hexdigest()[:16]
        self.workers, self.threads = workers, threads
        log.info("parallel: %d worker(s) on %s, %d thread(s) each; %.1f MB sent to each", workers, self.where,
                 threads, len(self.payload) / 1e6)

    where = "?"

    def submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future:
        """`fn(token, payload, *args)` on a free worker (payload None: the worker holds the run already)."""
        raise NotImplementedError

    def close(self, kill: bool = False) -> None:
        raise NotImplementedError

    def dead_trials(self) -> dict[str, dict[str, Any]]:
        """After workers died: the trials they ran, by config id ({phase, signal}), where known."""
        return {}


class LokyPool(Pool):
    """Processes on this machine; they and the tuning process share calibration results through a
    temporary directory (CalibrationCache.share), so each calibration pass runs once per run."""

    where = "this machine (loky)"

    def __init__(self, runner: TrialRunner, workers: int, threads: int) -> None:
        import tempfile

        super().__init__(runner, workers, threads)
        from joblib.externals.loky import ProcessPoolExecutor

        self.cache = runner.adaptor.calibration
        self.cache.share = tempfile.mkdtemp(prefix="lpot_calibration_")
        self.marks = tempfile.mkdtemp(prefix="lpot_workers_")
        env = {k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MXNET_OMP_MAX_THREADS")}
        self.executor = ProcessPoolExecutor(workers, initializer=_init_worker, env=env,
                                            initargs=(self.token, self.payload, os.getpid(), self.cache.share,
                                                      self.marks))
        self.executor.submit(ready, self.token, None)  # the workers start loading the run now

    def submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future:
        return self.executor.submit(fn, self.token, None, *args)

    def close(self, kill: bool = False) -> None:
        import shutil

        self.executor.shutdown(wait=not kill, kill_workers=kill)
        share, self.cache.share = self.cache.share, None
        if share:
            shutil.rmtree(share, ignore_errors=True)
        shutil.rmtree(self.marks, ignore_errors=True)

    def dead_trials(self) -> dict[str, dict[str, Any]]:
        return dead_worker_trials(self.marks)


class DaskPool(Pool):
    def __init__(self, runner: TrialRunner, workers: int, threads: int, address: str | None,
                 connect_timeout: float = 30.0) -> None:
        self.where = f"the dask cluster at {address}" if address else "a local dask cluster"
        super().__init__(runner, workers, threads)
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise ConfigError("parallel.backend=dask needs dask.distributed (pip install 'lpot-research[cluster]')"
                              ) from None
        self.cluster = None
        if address is None:
            self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                        dashboard_address=None, env={"OMP_NUM_THREADS": str(threads),
                                                                     "MXNET_OMP_MAX_THREADS": str(threads)})
        try:
            self.client = Client(self.cluster or address, timeout=f"{connect_timeout}s")
        except OSError as e:
            raise ConfigError(f"parallel.address={address!r}: no dask scheduler answers there within "
                              f"parallel.connect_timeout={connect_timeout:g} s ({one_line(e)})") from None
        self.data = self.client.scatter(self.payload, broadcast=True, hash=False)
        self.executor = self.client.get_executor(pure=False)
        self.running: dict[str, list[cf.Future]] = {}

    def _free_worker(self) -> str | None:
        """A worker with a free thread (dask's scheduler would otherwise queue two trials on a one-thread
        worker while another idles: its worker-saturation lets a worker hold more tasks than threads)."""
        for addr, info in self.client.scheduler_info(n_workers=-1)["workers"].items():
            mine = [f for f in self.running.get(addr, []) if not f.done()]
            self.running[addr] = mine
            if len(mine) < int(info.get("nthreads", 1)):
                return addr
        return None

    def submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future:
        addr = self._free_worker()
        where = {"workers": [addr], "allow_other_workers": True} if addr else {}
        future = self.executor.submit(fn, self.token, self.data, *args, **where)
        if addr:
            self.running[addr].append(future)
        return future

    def close(self, kill: bool = False) -> None:
        self.executor.shutdown(wait=not kill)
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


class _Broken(Exception):  # noqa: N818 - control flow inside the scheduler
    """The worker pool broke: a worker process died (its error is the pool's message)."""


def make_pool(runner: TrialRunner, parallel: Parallel, threads: int) -> Pool:
    if parallel.backend == "dask":
        return DaskPool(runner, parallel.workers, threads, parallel.address, parallel.connect_timeout)
    return LokyPool(runner, parallel.workers, threads)


# ------------------------------------------------------------------------------------------ the scheduler
@dataclass
class _Slot:
    cfg: TuneConfig
    future: cf.Future | None = None  # while it runs (or finished, not yet taken)
    started: bool = False
    n: int = 0


@dataclass
class TrialScheduler:
    """Runs batches of configurations as trials and returns their records in proposal order.

    `on_record(rec, model)` is called for each new record in order once it is final (measured when it
    passed); `elapsed()` is the run's wall clock (resumes included)."""

    runner: TrialRunner
    history: History
    exit: ExitPolicy
    elapsed: Callable[[], float]
    on_record: Callable[[TrialRecord, Any], None]
    parallel: Parallel | None = None  # None: serial
    threads: int = 1
    pool: Pool | None = None
    repeats: int = 0
    _held: list[tuple[TrialRecord, Any]] = field(default_factory=list)  # on record, not yet reported
    solo: set[str] = field(default_factory=set)  # configs that run alone: in flight when an unknown one crashed
    # timeout=0 ends the run at the first passing config, unless the strategy refines it (and then ends)
    first_pass_ends: bool = True

    def __post_init__(self) -> None:
        self.records = self.history.by_id()
        self.workers = self.parallel.workers if self.parallel is not None else 1
        self.pooled = self.parallel is not None and self.parallel.pooled
        # this process's fatal signal is kept in the run dir; trials run here say which phase they enter
        self.faults = FaultLog(self.history.path.parent / FAULTS_LOG)
        if not self.pooled:
            self.runner.on_phase = self.history.add_attempt

    # ------------------------------------------------------------------ shared steps
    def budget_spent(self, planned: int = 0) -> str | None:
        """Why no further trial may start when `planned` more are started or finished ahead already."""
        if len(self.history.trials) + planned >= self.exit.max_trials:
            return f"max_trials ({self.exit.max_trials}) reached"
        if self.exit.timeout > 0 and self.elapsed() >= self.exit.timeout:
            return f"timeout ({self.exit.timeout:g} s) reached"
        return None

    def _left(self) -> float | None:
        return self.exit.timeout - self.elapsed() if self.exit.timeout > 0 else None

    def _known(self, cfg: TuneConfig) -> TrialRecord | None:
        rec = self.records.get(cfg.id)
        if rec is not None:
            self.repeats += 1
            if self.repeats > MAX_CONSECUTIVE_REPEATS:
                raise Stop(f"strategy stalled: {self.repeats} consecutive already-evaluated proposals")
            return rec
        self.repeats = 0
        return None

    def _stopped(self, n: int, cfg: TuneConfig, why: str) -> None:
        self.history.add_stopped({"trial": n, "config_id": cfg.id, "note": cfg.note, "reason": why,
                                  "after_s": round(self.elapsed(), 3)})
        log.warning("trial %d (%s) stopped: %s; it is not recorded as a result", n, cfg.note or cfg.id, why)

    def _record(self, rec: TrialRecord, scores: Any, model: Any) -> TrialRecord:
        """Make `rec` the next trial on record (the first scored one also sets the evaluation order)."""
        rec.trial = len(self.history.trials) + 1
        rec.elapsed_s = rec.elapsed_s or self.elapsed()
        ev = self.runner.evaluator
        if rec.ok and scores is not None:
            import numpy as np

            if self._needs_order():  # the first INT8 scores decide it, for good
                order = ev.informative_order(np.asarray(self.history.analysis[FP32_SCORES]), scores)
                ev.set_order(order)
                self.history.add_analysis(EVAL_ORDER, order.tolist())
            if ev.order is not None:  # (a trial evaluated whole before the order was known: rank it under it)
                rec.rank_accuracy = ev.rank_accuracy(np.asarray(scores))
        self.history.add(rec)
        self.records[rec.config_id] = rec
        self._held.append((rec, model))
        return rec

    def _report(self, measure: bool = True) -> None:
        """Report held records in order: all of them (measuring the passing ones first, which needs
        nothing in flight), or with `measure=False` only those before the first that needs measuring."""
        while self._held:
            rec, model = self._held[0]
            if self.runner.unmeasured(rec):
                if not measure:
                    return
                if model is None:
                    model = self.runner.rebuild(rec)
                self.runner.measure_recorded(self.history, rec, model)
            self._held.pop(0)
            self.on_record(rec, model)

    def _needs_order(self) -> bool:
        ev = self.runner.evaluator
        return ev.per_sample and ev.order is None and FP32_SCORES in self.history.analysis

    def _end_if_passed(self, rec: TrialRecord) -> None:
        if self.first_pass_ends and self.exit.timeout == 0 and rec.passed:
            raise Stop("met the criterion (timeout=0: stop at the first passing config)")

    def _take_ahead(self, cfg: TuneConfig) -> TrialRecord:
        rec = self.history.ahead[cfg.id]
        rec.elapsed_s = 0.0
        return self._record(rec, self.history.analysis.get(analysis_key(SCORES, cfg.id)), None)

    # ------------------------------------------------------------------ running a batch
    def run(self, cfgs: list[TuneConfig], stop_at_pass: bool) -> list[TrialRecord]:
        """The records of `cfgs` in order (already evaluated ones answered from the history), ending
        after the first that passes when `stop_at_pass`."""
        interrupted = False
        try:
            if self.pooled:
                return self._parallel(cfgs, stop_at_pass)
            return self._serial(cfgs, stop_at_pass)
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            self._report(measure=not interrupted)
            if interrupted:  # what is on record is reported, unmeasured
                for rec, model in self._held:
                    self.on_record(rec, model)
                self._held.clear()

    def _serial(self, cfgs: list[TuneConfig], stop_at_pass: bool) -> list[TrialRecord]:
        out = []
        for cfg in cfgs:
            rec = self._known(cfg)
            if rec is None:
                spent = self.budget_spent()  # also covers a resumed run whose budget is used up
                if spent:
                    raise Stop(spent)
                if cfg.id in self.history.ahead:
                    rec = self._take_ahead(cfg)
                else:
                    rec = self._given_up(cfg) or self._trial(cfg)
                self._report()
            out.append(rec)
            self._end_if_passed(rec)
            if rec.passed and stop_at_pass:
                break
        return out

    def _trial(self, cfg: TuneConfig) -> TrialRecord:
        n = len(self.history.trials) + 1
        try:
            with deadline(self._left()):
                rec, model, outcome = self.runner.run(cfg, n, self.elapsed())
        except (TrialTimeout, KeyboardInterrupt) as e:
            self._stopped(n, cfg, interrupt_reason(e) if isinstance(e, KeyboardInterrupt) else "timeout")
            if isinstance(e, KeyboardInterrupt):
                raise
            raise Stop(f"timeout ({self.exit.timeout:g} s) reached during trial {n}, which was stopped") from None
        return self._record(rec, outcome.scores if outcome is not None else None, model)

    def _given_up(self, cfg: TuneConfig) -> TrialRecord | None:
        """The failed record of a config whose trials the tuning process's death cut short twice (it is not
        run a third time); None when it may run (a first crash is said)."""
        cut = self.history.cut_short(cfg.id)
        if not cut:
            return None
        signals = fatal_signals(self.history.path.parent / FAULTS_LOG)
        last = cut[-1]
        how = f"{signal_text(signals.get(int(last.get('pid') or 0)))} during {last.get('phase', '?')}"
        n = len(self.history.trials) + 1
        if len(cut) < CRASHES_TO_FAIL:
            log.warning("trial %d (%s) killed the tuning process last time (%s); it runs again, and a second such "
                        "death records it as failed (parallel.isolate=true runs each trial in a process of its own)",
                        n, cfg.note or cfg.id, how)
            return None
        err = f"killed the tuning process {len(cut)} times, last by {how}; not run again"
        log.warning("trial %d failed (%s): %s", n, cfg.note or cfg.id, err)
        rec = TrialRecord(trial=n, config_id=cfg.id, config=cfg.to_dict(), status="failed", note=cfg.note, error=err,
                          elapsed_s=self.elapsed())
        return self._record(rec, None, None)

    def _pool(self) -> Pool:
        if self.pool is None:
            self.pool = make_pool(self.runner, self.parallel, self.threads)
        return self.pool

    def spread(self, base: TuneConfig, names: list[str]) -> dict[str, float]:
        """Inspector.distances of `names` split over the workers (nothing else is in flight: the strategy
        asks between batches)."""
        pool = self._pool()
        futures = [pool.submit(run_distances, base.to_dict(), names[i::self.workers]) for i in range(self.workers)]
        out: dict[str, float] = {}
        for f in futures:
            out.update(f.result())
        return out

    def _parallel(self, cfgs: list[TuneConfig], stop_at_pass: bool) -> list[TrialRecord]:
        self._pool()
        slots = [_Slot(c) for c in cfgs]
        out: list[TrialRecord] = []
        kill = False
        try:
            for head, slot in enumerate(slots):
                self._fill(slots, head)
                rec = self._known(slot.cfg)
                if rec is None and not slot.started and slot.cfg.id not in self.history.ahead:
                    rec = self._given_up(slot.cfg)
                if rec is None and not slot.started and self._broken(slots) is None:
                    spent = self.budget_spent()
                    if spent or slot.cfg.id not in self.history.ahead:  # not started: the budget is spent
                        raise Stop(spent or "no trial could start")
                    rec = self._take_ahead(slot.cfg)  # finished ahead in an earlier process
                if rec is None:  # started: finished ahead, or wait for it
                    rec = self._take_ahead(slot.cfg) if slot.cfg.id in self.history.ahead else self._wait(slots, head)
                self._report(measure=False)
                out.append(rec)
                self._end_if_passed(rec)  # (its Stop kills what still runs: it is not needed)
                if rec.passed and stop_at_pass:
                    break
            return out
        except BaseException:
            kill = True
            raise
        finally:
            self._settle(slots, kill)

    def _planned(self, slots: list[_Slot], head: int) -> int:
        """Trials that will be on record before any further one: started, or finished ahead, from `head` on."""
        ids = {s.cfg.id for s in slots[head:] if s.cfg.id not in self.records
               and (s.started or s.cfg.id in self.history.ahead)}
        return len(ids)

    def _fill(self, slots: list[_Slot], head: int) -> None:
        """Start the next unstarted new configurations while workers are free, in proposal order."""
        running = [s for s in slots if s.future is not None and not s.future.done()]
        if any(s.cfg.id in self.solo for s in running):
            return
        busy = len(running)
        planned = self._planned(slots, head)
        taken = {s.cfg.id for s in slots[head:] if s.started}
        for pos in range(head, min(len(slots), head + LOOKAHEAD * self.workers)):
            s = slots[pos]
            if busy >= self.workers:
                return
            if s.started or s.cfg.id in self.records or s.cfg.id in self.history.ahead or s.cfg.id in taken:
                continue
            if len(self.history.cut_short(s.cfg.id)) >= CRASHES_TO_FAIL:
                continue  # given up in its turn (_given_up)
            if self.budget_spent(planned):
                return
            if s.cfg.id in self.solo and busy:
                return
            if self._broken(slots) is not None:
                return  # (_wait replaces the workers)
            s.n = len(self.history.trials) + planned + 1
            order = self.runner.evaluator.order
            task = Task(s.n, s.cfg.to_dict(), s.cfg.note, self.runner.baseline,
                        order.tolist() if order is not None else None, self._left())
            s.future, s.started = self._pool().submit(run_task, task), True
            busy, planned = busy + 1, planned + 1
            taken.add(s.cfg.id)
            if s.cfg.id in self.solo:
                return

    def _result(self, slot: _Slot) -> tuple[TrialRecord | None, Any]:
        """A finished slot's record (None when it was stopped: the budget ran out) and scores."""
        future, slot.future = slot.future, None
        assert future is not None, "internal: a slot without a future"
        try:
            status, rec, scores = future.result()
        except cf.CancelledError:
            return None, None
        except Exception as e:  # noqa: BLE001 - the worker died or could not run the task (not this process's bug)
            from joblib.externals.loky.process_executor import BrokenProcessPool

            if isinstance(e, BrokenProcessPool):
                slot.future = future  # (with the others in flight: _recover sorts them out)
                raise _Broken(str(e)) from None
            cfg = slot.cfg  # e.g. dask's KilledWorker: this task killed the workers that ran it
            log.warning("trial %d failed on its worker (%s): %s", slot.n, cfg.note or cfg.id, one_line(e))
            return TrialRecord(trial=slot.n, config_id=cfg.id, config=cfg.to_dict(), status="failed", note=cfg.note,
                               error=f"worker: {one_line(e)}"), None
        if status != "ok":
            return None, None
        if not rec.ok:
            log.warning("trial %d failed (%s): %s", slot.n, slot.cfg.note or slot.cfg.id, rec.error)
        return rec, scores

    def _wait(self, slots: list[_Slot], head: int) -> TrialRecord:
        """Wait for the head slot; slots behind it that finish meanwhile are written ahead. A worker's death
        records the trial that caused it as failed and runs the others again on new workers."""
        while True:
            try:
                return self._wait_once(slots, head)
            except _Broken as e:
                rec = self._recover(slots, head, str(e))
            if rec is not None:
                return self._record(rec, None, None)
            self._fill(slots, head)
            if slots[head].future is None:
                raise Stop(self.budget_spent() or "no trial could start")

    def _recover(self, slots: list[_Slot], head: int, error: str) -> TrialRecord | None:
        """After the pool broke: the trials that killed their worker are failed records (the head's is
        returned, the others are kept ahead), the rest are made ready to run again, on new workers."""
        running = [s for s in slots if s.future is not None]
        dead = self.pool.dead_trials() if self.pool is not None else {}
        self._close_pool(kill=True)
        for s in running:
            s.future, s.started = None, False
        culprits = {s.cfg.id: dead[s.cfg.id] for s in running if dead.get(s.cfg.id, {}).get("signal") is not None}
        if not culprits and len(running) == 1:  # it ran alone: it is the one
            exits = pool_exit_signals(error)
            culprits = {running[0].cfg.id: {"phase": dead.get(running[0].cfg.id, {}).get("phase", "quantize or "
                                                                                          "evaluate"),
                                            "signal": exits[0] if exits else None}}
        if not culprits:
            self.solo.update(s.cfg.id for s in running)
            exits = ", ".join(signal_text(sig) for sig in pool_exit_signals(error)) or "no exit code"
            log.warning("a worker process died (%s) running one of trials %s, not known which: they run again one "
                        "at a time, on new workers", exits, ", ".join(str(s.n) for s in running))
            return None
        out = None
        for s in running:
            if s.cfg.id not in culprits:
                continue
            why = culprits[s.cfg.id]
            err = f"killed by {signal_text(why['signal'])} during {why['phase']}"
            log.warning("trial %d failed (%s): %s; its worker is replaced", s.n, s.cfg.note or s.cfg.id, err)
            rec = TrialRecord(trial=s.n, config_id=s.cfg.id, config=s.cfg.to_dict(), status="failed", note=s.cfg.note,
                              error=err)
            s.started = True  # (answered, never run again)
            if s is slots[head]:
                out = rec
            else:
                self.history.add_ahead(rec)
        return out

    @staticmethod
    def _broken(slots: list[_Slot]) -> str | None:
        """The pool's error when a worker died (every future in flight then holds it)."""
        from joblib.externals.loky.process_executor import BrokenProcessPool

        for s in slots:
            f = s.future
            if f is not None and f.done() and not f.cancelled() and isinstance(f.exception(), BrokenProcessPool):
                return str(f.exception())
        return None

    def _wait_once(self, slots: list[_Slot], head: int) -> TrialRecord:
        slot = slots[head]
        broken = self._broken(slots)
        if broken is not None:
            raise _Broken(broken)
        while slot.future is not None and not slot.future.done():
            left = self._left()
            running = [s.future for s in slots[head:] if s.future is not None]
            cf.wait(running, timeout=None if left is None else max(left, 0) + 5, return_when=cf.FIRST_COMPLETED)
            for s in slots[head + 1:]:
                if s.future is not None and s.future.done():
                    self._keep_ahead(s)
            self._fill(slots, head)
            if not slot.future.done() and self.budget_spent() and self.exit.timeout > 0:
                raise Stop(f"timeout ({self.exit.timeout:g} s) reached with trials running, which were stopped")
        rec, scores = self._result(slot)
        if rec is None:
            self._stopped(slot.n, slot.cfg, "timeout")
            raise Stop(f"timeout ({self.exit.timeout:g} s) reached during trial {slot.n}, which was stopped")
        rec.elapsed_s = 0.0
        return self._record(rec, scores, None)

    def _keep_ahead(self, slot: _Slot) -> None:
        rec, scores = self._result(slot)  # (the head is never kept ahead: it is taken in its turn)
        if rec is not None and rec.config_id not in self.records:
            if scores is not None:  # evaluated before the order was known: its scores rank it later
                self.history.add_analysis(analysis_key(SCORES, rec.config_id), scores.tolist())
            self.history.add_ahead(rec)

    def _settle(self, slots: list[_Slot], kill: bool) -> None:
        """After a batch: keep what finished; stop (`kill`) or wait for what still runs, so that nothing is
        in flight when latency is measured."""
        running = [s for s in slots if s.future is not None]
        if not running:
            return
        broken = False
        if not kill:
            cf.wait([s.future for s in running])
        for s in running:
            try:
                if s.future is not None and s.future.done() and not s.future.cancelled():
                    self._keep_ahead(s)
                    continue
            except _Broken:  # a worker died: what was in flight runs again when it is proposed again
                broken = True
            self._stopped(s.n, s.cfg, "a worker process died" if broken else "the run stopped")
        if kill or broken:
            self._close_pool(kill=True)

    def _close_pool(self, kill: bool = False) -> None:
        if self.pool is not None:
            pool, self.pool = self.pool, None
            pool.close(kill)

    def close(self, kill: bool = False) -> None:
        """At the end of the run: the workers go, and this process's fault record."""
        self._close_pool(kill)
        self.faults.close()


__all__ = ["Pool", "Stop", "Task", "TrialScheduler", "make_pool", "run_task"]
