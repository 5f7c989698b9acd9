"""One run dir, one writer: a run takes an exclusive lock on `<run dir>/.lock` (fcntl.flock) before it
checks or writes the dir, and holds it to its end. A second process starting or resuming the same dir is
refused in one line naming the holder's PID. The kernel drops the lock when its process dies (even by
SIGKILL), so a dead run's lock is taken over by the next one."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from lpot_research.core.errors import ConfigError

# run dirs this process holds -> [descriptor, how many holders]: flock conflicts between two descriptors
# of one process too, so a nested acquire (tune.py's, then tune()'s) reuses the held one
_HELD: dict[Path, list[int]] = {}


class RunLock:
    FILENAME = ".lock"

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / self.FILENAME
        self._key: Path | None = None

    def acquire(self) -> RunLock:
        key = self.run_dir.resolve()
        if key in _HELD:  # this process holds it already (tune.py takes it before tune() does)
            _HELD[key][1] += 1
            self._key = key
            return self
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError(f"cannot write the run dir {self.run_dir}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            for _ in range(100):  # the holder writes its PID just after taking the lock: give it a second
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                if holder:
                    break
                time.sleep(0.01)
            os.close(fd)
            holder = holder or "unknown"
            raise ConfigError(f"{str(self.run_dir)!r} is in use by another run (pid {holder}): one run dir takes "
                              "one writer; wait for that run to end (then resume it), or choose another directory"
                              ) from None
        pid = f"{os.getpid()}\n".encode()
        os.pwrite(fd, pid, 0)  # then cut what a longer earlier PID left: the file is never empty in between
        os.ftruncate(fd, len(pid))
        _HELD[key] = [fd, 1]
        self._key = key
        return self

    def release(self) -> None:
        held = _HELD.get(self._key) if self._key is not None else None
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            os.close(held[0])  # closing the descriptor drops the lock
            del _HELD[self._key]
        self._key = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
