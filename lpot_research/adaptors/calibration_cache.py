"""The one calibration cache of every back end, and the file lock that lets the processes of one
parallel run compute each shared entry once."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["CalibrationCache"]
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
