"""Bounding a trial by the run's time budget, the user's own evaluation included.

Inside `deadline(seconds)`, the work is interrupted when the budget runs out: by a SIGALRM timer when
this is the main thread (it interrupts Python code, sleeps and blocking calls as soon as they return
to the interpreter, e.g. an `eval_func` that never returns), and by `check()` calls between batches
everywhere (a thread cannot take signals). `TrialTimeout` derives from BaseException, so a user's
`except Exception` does not swallow it.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Iterator


class TrialTimeout(BaseException):  # noqa: N818 - it is not an error of the trial's own making
    """The run's time budget ran out during a trial."""


_until: list[float] = []  # the innermost active deadline (perf_counter), as a stack


def check() -> None:
    """Raise TrialTimeout when the active deadline has passed (cheap; call it between batches)."""
    if _until and time.perf_counter() >= _until[-1]:
        raise TrialTimeout


def remaining() -> float:
    return _until[-1] - time.perf_counter() if _until else math.inf


@contextlib.contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Interrupt the block with TrialTimeout after `seconds` (None or inf: no limit)."""
    if seconds is None or not math.isfinite(seconds):
        yield
        return
    if seconds <= 0:
        raise TrialTimeout
    _until.append(time.perf_counter() + seconds)
    use_alarm = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    previous = None
    if use_alarm:
        def on_alarm(signum: int, frame: object) -> None:
            raise TrialTimeout

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)
        _until.pop()
