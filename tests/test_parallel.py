"""Trials in parallel (lpot_research.run.scheduler): bad settings, the dask backend on a real local cluster
started by the test, what cannot be sent to a worker, the time budget with trials in flight, and
real back ends on worker processes. The parallel contract of every strategy (same configurations and
best whatever the number of workers) is in tests/strategy_contract.py; kills with trials in flight in
tests/test_faults.py."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from lpot_research.core.errors import ConfigError
from lpot_research.run.history import History
from lpot_research.strategies.random import RandomStrategy
from lpot_research.strategies.tpe import TPEStrategy
from tests.fakes import FakeAdaptor
from tests.helpers import run_fake, trials
from tests.strategy_contract import LONG, NO_PASS, merge

NO_DASK = "dask.distributed is not installed (pip install 'lpot-research[cluster]')"


@pytest.mark.parametrize("parallel, needle", [
    ({"workers": 0}, "parallel.workers=0 must be an int >= 1"),
    ({"workers": 2, "backend": "ray"}, "parallel.backend='ray' is unknown; valid choices: ['loky', 'dask']"),
    ({"workers": 2, "address": "tcp://127.0.0.1:1"}, "needs parallel.backend=dask"),
])
def test_bad_parallel_settings_are_one_clear_error(tmp_path, parallel, needle):
    with pytest.raises(ConfigError, match=None) as e:
        run_fake(tmp_path, FakeAdaptor(), "random", {"parallel": parallel})
    assert needle in str(e.value)


def test_a_dask_scheduler_that_does_not_answer_is_a_clear_error(tmp_path):
    pytest.importorskip("distributed", reason=NO_DASK)
    with pytest.raises(ConfigError, match=r"no dask scheduler answers there within parallel.connect_timeout=3 s"):
        run_fake(tmp_path, FakeAdaptor(), "random", merge(NO_PASS, LONG, {"parallel": {
            "workers": 2, "backend": "dask", "address": "tcp://127.0.0.1:9", "connect_timeout": 3}}))



class Unpicklable(FakeAdaptor):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.lock = threading.Lock()  # cannot be pickled


def test_a_run_that_cannot_be_sent_to_workers_says_so_before_any_trial(tmp_path):
    with pytest.raises(ConfigError, match="cannot be sent to worker processes.*use parallel.workers=1"):
        run_fake(tmp_path, Unpicklable(), "random", merge(NO_PASS, LONG, {"parallel": {"workers": 2}}))
    assert History.read(tmp_path).trials == []


def test_dask_cluster_started_by_the_test_gives_the_serial_result(tmp_path):
    distributed = pytest.importorskip("distributed", reason=NO_DASK)
    cfg = merge(NO_PASS, LONG)
    serial = run_fake(tmp_path / "serial", FakeAdaptor(ops=5, sleep=0.05), TPEStrategy(seed=4), cfg)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        par = run_fake(tmp_path / "dask", FakeAdaptor(ops=5, sleep=0.05), TPEStrategy(seed=4),
                       merge(cfg, {"parallel": {"workers": 2, "backend": "dask", "address": c.scheduler_address}}))
        ran_on = {w for w, n in distributed.Client(c).run(lambda: len(__import__(
            "lpot_research.run.scheduler", fromlist=["_RUNNERS"])._RUNNERS)).items() if n}
    assert [t.config_id for t in trials(par)] == [t.config_id for t in trials(serial)]
    assert par.summary.best.config_id == serial.summary.best.config_id
    assert len(ran_on) == 2, "both dask workers ran trials"


def test_a_local_dask_cluster_is_started_and_closed_for_the_run(tmp_path):
    pytest.importorskip("distributed", reason=NO_DASK)
    cfg = merge(NO_PASS, {"exit_policy": {"timeout": 3600, "max_trials": 6}})
    serial = run_fake(tmp_path / "serial", FakeAdaptor(ops=5), RandomStrategy(seed=2), cfg)
    par = run_fake(tmp_path / "dask", FakeAdaptor(ops=5), RandomStrategy(seed=2),
                   merge(cfg, {"parallel": {"workers": 2, "backend": "dask"}}))
    assert [t.config_id for t in trials(par)] == [t.config_id for t in trials(serial)]


def test_the_time_budget_stops_trials_in_flight(tmp_path):
    res = run_fake(tmp_path, FakeAdaptor(ops=5, sleep=0.4), RandomStrategy(seed=1),
                   merge(NO_PASS, {"exit_policy": {"timeout": 3.0, "max_trials": 1000}, "parallel": {"workers": 2}}))
    h = History.read(tmp_path)
    assert "timeout" in res.summary.stop_reason
    assert 2 <= len(h.trials) < 30
    assert res.summary.elapsed_s < 3.0 + 10  # the run does not wait for stopped trials to end
    assert {s["config_id"] for s in h.stopped}.isdisjoint(t.config_id for t in h.trials)


def test_tpe_tells_optuna_one_observation_per_distinct_config(tmp_path):
    """Repeats are FAIL (ignored by the sampler), a config that failed is COMPLETE with the FAILED score:
    the same rule for first and later proposals."""
    import optuna

    from lpot_research.strategies.tpe import FAILED

    small = {"quantization": {"model_wise": {"weight": {"granularity": "per_channel"},
                                             "activation": {"scheme": "asym", "algorithm": "minmax"}}},
             "accuracy_criterion": {"kind": "absolute", "tolerance": 0.0},
             "exit_policy": {"timeout": 3600, "max_trials": 50}}
    strat = TPEStrategy(seed=3, n_startup_trials=2, batch=2)
    res = run_fake(tmp_path, FakeAdaptor(ops=2, penalties=[0.1, 0.1], fail_ops=["op1"]), strat, small)
    done = [t for t in strat.study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == res.summary.trials == res.space.size  # every config observed exactly once
    failed = {t.config_id for t in trials(res) if not t.ok}
    assert failed and sum(1 for t in done if t.value == FAILED) == len(failed)
    assert any(t.state == optuna.trial.TrialState.FAIL for t in strat.study.trials), "repeats were proposed"


def test_pytorch_on_two_workers_gives_the_serial_result(tmp_path):
    pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'lpot-research[pytorch]')")
    from lpot_research import tune
    from lpot_research.models.digits import DigitsCNN

    b = DigitsCNN().load()
    cfg = {"exit_policy": {"timeout": 3600, "max_trials": 4}, "threads": 1}
    runs = {}
    for n in (1, 2):
        runs[n] = tune(b.model, b.calib_dataloader, b.eval_dataloader, b.metric, framework="pytorch",
                       strategy=RandomStrategy(seed=3), objective="modelsize", example_inputs=b.example_inputs,
                       config={**cfg, "parallel": {"workers": n}}, output_dir=tmp_path / f"w{n}")
    one, two = trials(runs[1]), trials(runs[2])
    assert [t.config_id for t in two] == [t.config_id for t in one] and len(one) == 4
    assert [t.passed for t in two] == [t.passed for t in one]
    np.testing.assert_allclose([t.decision_accuracy for t in two], [t.decision_accuracy for t in one])
    assert runs[2].summary.best.config_id == runs[1].summary.best.config_id


def _compute_shared(share: str, log: str, key: tuple) -> int:
    import os
    import time

    from lpot_research.adaptors.base import CalibrationCache

    cache = CalibrationCache()
    cache.share = share

    def compute() -> int:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)
        return 42

    return cache.get(key, compute)


def test_shared_calibration_is_computed_by_one_process_only(tmp_path):
    """CalibrationCache.share: two processes needing the same key at once, one pass; a lock left by a
    dead process is taken over."""
    import multiprocessing as mp
    import os

    share, log = tmp_path / "share", tmp_path / "passes.log"
    share.mkdir()
    with mp.get_context("spawn").Pool(2) as pool:
        got = pool.starmap(_compute_shared, [(str(share), str(log), ("model", 64, "kl"))] * 2)
    assert got == [42, 42]
    assert len(log.read_text().split()) == 1, "computed once, read by the other process"

    import hashlib

    key = ("model", 64, "minmax")
    dead = mp.get_context("spawn").Process(target=os.getpid)
    dead.start()
    dead.join()
    (share / f"{hashlib.sha256(repr(key).encode()).hexdigest()[:32]}.lock").write_text(str(dead.pid))
    assert _compute_shared(str(share), str(log), key) == 42
    assert len(log.read_text().split()) == 2
