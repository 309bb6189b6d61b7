"""When to probe: a step cadence, optionally held to a share of the training wall time.

Example:
    >>> cadence = Cadence(every=10, budget=0.1, expected_seconds=20.0)
    >>> cadence.start()
    >>> cadence.candidate(10), cadence.candidate(11)
    (True, False)
    >>> cadence.within_budget()        # 20 s of probing needs 200 s of training first
    False
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Cadence:
    """Probe at every ``every``-th step; with a ``budget``, only while probing stays within that share.

    A candidate step is probed when the probes so far plus the expected cost of this one stay at or
    below ``budget`` times the training wall time so far (wall time since :meth:`start`, minus the
    probes). The expected cost is the dearest probe's so far, or ``expected_seconds`` before the first.
    ``budget=None``: every candidate is probed. A candidate the budget refuses a probe may still get a
    light check (no generation), costed the same way (``light_seconds`` before the first) and counted
    in the same budget. So are the learning checks between them (:meth:`learning_due`): no model call,
    but their cost grows with the rows trained.
    """

    every: int
    budget: float | None = None
    expected_seconds: float = 0.0
    light_seconds: float = 0.0
    learning_seconds: float = 0.0  # the dearest learning check so far
    probes: int = 0
    learning_checks: int = 0
    light_checks: int = 0
    probe_seconds: float = 0.0
    skipped: int = 0
    _started: float = field(default_factory=time.perf_counter, repr=False)
    _stopped: float | None = field(default=None, repr=False)
    _learned_at: float = field(default=0.0, repr=False)  # training seconds at the last learning check

    def start(self) -> None:
        """Start the training clock (call when training starts or resumes)."""
        self._started, self._stopped, self._learned_at = time.perf_counter(), None, 0.0

    def stop(self) -> None:
        """Stop the training clock (at train end), so the figures no longer change."""
        self._stopped = time.perf_counter()

    def candidate(self, step: int) -> bool:
        """Whether ``step`` is on the cadence."""
        return step > 0 and step % self.every == 0

    def train_seconds(self) -> float:
        """Training wall time since :meth:`start`, probes excluded."""
        now = time.perf_counter() if self._stopped is None else self._stopped
        return max(now - self._started - self.probe_seconds, 0.0)

    def within_budget(self, light: bool = False) -> bool:
        """Whether a probe (or a ``light`` check) now keeps the probing share within the budget (a probe
        refused counts as skipped)."""
        expected = self.light_seconds if light else self.expected_seconds
        ok = self.budget is None or self.probe_seconds + expected <= self.budget * self.train_seconds()
        self.skipped += not (ok or light)
        return ok

    def record(self, seconds: float, light: bool = False) -> None:
        """Account for a probe (or a ``light`` check) that took ``seconds``; the dearest of its kind so far
        is the expected cost of the next one (probes grow dearer as answers lengthen, and a busy machine
        slows some)."""
        if light:
            self.light_seconds = seconds if self.light_checks == 0 else max(self.light_seconds, seconds)
            self.light_checks += 1
        else:
            self.expected_seconds = seconds if self.probes == 0 else max(self.expected_seconds, seconds)
            self.probes += 1
        self.probe_seconds += seconds

    def learning_due(self) -> bool:
        """Whether a learning check may run now: the dearest so far costs at most half the budget's share of
        the training time since the last one (cheap checks run at every logging step; on a large store they
        thin out instead of slowing training; a skipped one loses nothing, the next reads every record).

        Example:
            >>> c = Cadence(every=5, budget=0.1)
            >>> c.learning_due(), c.record_learning(3.0), c.learning_due()   # 3 s wait for 60 s of training
            (True, None, False)
        """
        if self.budget is None:
            return True
        return self.learning_seconds <= self.budget / 2 * (self.train_seconds() - self._learned_at)

    def record_learning(self, seconds: float) -> None:
        """Account for a learning check that took ``seconds`` (counted in the budget's share too)."""
        self.learning_seconds = max(self.learning_seconds, seconds)
        self.learning_checks += 1
        self.probe_seconds += seconds
        self._learned_at = self.train_seconds()

    def spend(self, seconds: float) -> None:
        """Account for a one-time cost (e.g. growing the watch set): counted in the budget, not in the
        expected cost of the next probe or light check.

        Example:
            >>> c = Cadence(every=5, budget=0.1)
            >>> c.record(2.0, light=True); c.spend(10.0)
            >>> c.light_seconds, c.probe_seconds
            (2.0, 12.0)
        """
        self.probe_seconds += seconds

    def summary(self) -> dict[str, float | int | None]:
        """JSON-ready cost figures for the report."""
        train = self.train_seconds()
        return {
            "every_n_steps": self.every,
            "budget": self.budget,
            "probe_passes": self.probes,
            "light_checks": self.light_checks,
            "learning_checks": self.learning_checks,
            "probe_seconds": round(self.probe_seconds, 3),
            "train_seconds": round(train, 3),
            "share": round(self.probe_seconds / train, 4) if train > 0 else None,
            "skipped_for_budget": self.skipped,
        }
