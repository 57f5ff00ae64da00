"""SIGTERM (what schedulers send before killing a job) and SIGINT, turned into a request to stop at
the next step boundary, so the loop can write a checkpoint and exit cleanly instead of dying
mid-step. A second signal of either kind stops at once (the user insists)."""

from __future__ import annotations

import signal
import threading

EXIT_CODES = {"SIGTERM": 143, "SIGINT": 130}


class StopSignals:
    def __init__(self):
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.received or "", 1)

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            raise KeyboardInterrupt(f"second {name}")
        self.received = name

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
