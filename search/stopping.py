"""Ctrl-C and SIGTERM stop a study cleanly, and say so.

Tune's own SIGINT handler stops an experiment after saving its state, then returns from
``fit()`` as though it had finished and suggests ``Tuner.restore``. In this service the study,
not Tune's state, is the ledger (``resume`` reads it). So a stopped command must report how
far it got and how to continue, and exit 130 (SIGINT) or 143 (SIGTERM), never print a result
that looks final. Without a handler, SIGTERM would kill the driver outright, skipping the
recorder's last writes.

``StopSignals`` is a Tune callback: Tune sets it up after installing its own handler. It then
routes SIGINT and SIGTERM to Tune's graceful stop and remembers which one arrived. A second
signal stops at once. ``fit`` runs the tuner with Tune's interrupt notices silenced and the
previous handlers restored afterwards. ``raise_if_stopped`` raises ``Interrupted`` once the
caller has reconciled what was recorded.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Callable

from ray.tune import Callback

from catalogue.errors import Interrupted, LeaseLost

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class StopSignals(Callback):
    def __init__(self) -> None:
        self.received: int | None = None
        self.lost: str | None = None
        self._tune_stop: Any = None

    def request_stop(self, reason: str) -> None:
        """Stop the run from any thread (the lease's heartbeat, when another driver took the
        sweep over): Tune's own handler only sets an event, then re-arms SIGINT, which only
        the main thread may do."""
        self.lost = reason
        if callable(self._tune_stop):
            try:
                self._tune_stop(signal.SIGINT, None)
            except ValueError:  # signal.signal outside the main thread, after the event
                pass

    def setup(self, **info: Any) -> None:
        if not _main_thread():  # signal handlers can only be set from the main thread
            return
        tune_stop = self._tune_stop = signal.getsignal(signal.SIGINT)

        def on_signal(signum: int, frame: Any) -> None:
            if self.received is not None:
                raise KeyboardInterrupt  # a second signal: stop now, without the last save
            self.received = signum
            if callable(tune_stop):
                tune_stop(signal.SIGINT, frame)

        for sig in SIGNALS:
            signal.signal(sig, on_signal)

    def fit(self, tuner: Any) -> Any:
        """``tuner.fit()``; the signal handlers and Tune's log level as they were after it."""
        before = {sig: signal.getsignal(sig) for sig in SIGNALS}
        tune_log = logging.getLogger("ray.tune.tune")
        level = tune_log.level
        tune_log.setLevel(logging.ERROR)  # its stop notice and Tuner.restore hint
        try:
            return tuner.fit()
        finally:
            tune_log.setLevel(level)
            if _main_thread():
                for sig, handler in before.items():
                    if handler is not None:
                        signal.signal(sig, handler)

    def raise_if_stopped(self, progress: Callable[[], str]) -> None:
        """Raise ``Interrupted`` with ``progress()`` (what was recorded, how to go on), or
        ``LeaseLost`` when another driver took the run over."""
        if self.lost is not None:
            raise LeaseLost(f"{self.lost}; {progress()}")
        if self.received is not None:
            raise Interrupted(self.received, progress())
