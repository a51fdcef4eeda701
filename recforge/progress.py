"""Progress of long loops, as log lines: how far, how fast, how long to go.

A stage's work at a million events takes minutes; a user watching the log (the
CLI, a Prefect flow run, ``dvc repro``) should see it move. :class:`Progress`
logs at most one line every ``every_s`` seconds, and a last one at the end
with the true wall time of the whole loop.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("recforge.progress")


class Progress:
    """``Progress(label, total)``; ``advance(n)`` after each piece of work; ``done()`` at the end."""

    def __init__(self, label: str, total: int, *, unit: str = "", every_s: float = 10.0) -> None:
        self.label, self.total, self.unit, self.every_s = label, max(int(total), 0), unit, float(every_s)
        self.count = 0
        self.started = self._last = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def advance(self, n: int = 1) -> None:
        self.count += int(n)
        now = time.perf_counter()
        if now - self._last >= self.every_s and self.count < self.total:
            self._last = now
            rate = self.count / max(now - self.started, 1e-9)
            left = (self.total - self.count) / rate if rate > 0 else float("inf")
            log.info(
                "%s: %d/%d%s (%.0f%%), %.1fs elapsed, ~%.0fs to go",
                self.label,
                self.count,
                self.total,
                self.unit,
                100.0 * self.count / max(self.total, 1),
                now - self.started,
                left,
            )

    def done(self) -> float:
        """Log the whole loop's wall time and return it."""
        seconds = self.elapsed
        log.info("%s: %d%s in %.1fs", self.label, self.count, self.unit, seconds)
        return seconds
