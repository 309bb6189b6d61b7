"""The checks a callback runs while its run trains, and what they publish.

At a candidate step: a probe (every rank measures, rank 0 scores, decides and publishes), or, when
the budget refuses it, a light check (M0's answers read by the current model, no generation); at
each logging step between probes, the learning check (no model call; held to the same budget). A
probe or light check says whether rank 0 asks for a pause; the callback pauses every rank.

Example:
    >>> checks = Checks(trainer, reference, current, pause_on_regression=True)  # doctest: +SKIP
    >>> pause = checks.probe(callback.live, step=40)                             # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .decide.alerts import Alert
from .metrics import checkpoint_metrics, flagged_rows, learning_metrics
from .monitor import Monitor
from .publish.sinks import Publisher
from .run.sharding import from_rank0

if TYPE_CHECKING:
    from .callback import Live

Models = Callable[[], AbstractContextManager[torch.nn.Module]]


class Checks:
    """Probes, light checks and learning checks of ``trainer``'s run, published by :attr:`publisher`.

    ``reference`` and ``current``: M0 and the model being trained, ready for forwards (sharded: every
    rank enters together). ``grow_watch``: a light check may add prompts like a new pattern's rows to
    the watch set (the default watch set). :attr:`acknowledged`: behaviours flagged before a resume
    (they pause no more).
    """

    def __init__(
        self, trainer: Any, reference: Models, current: Models, pause_on_regression: bool, grow_watch: bool = True
    ) -> None:
        self.trainer, self.reference, self.current = trainer, reference, current
        self.pause_on_regression, self.grow_watch = pause_on_regression, grow_watch
        self.publisher = Publisher([])
        self.acknowledged: set[str] = set()

    @property
    def is_main(self) -> bool:
        return bool(self.trainer.is_world_process_zero())

    def probe(self, live: Live, step: int) -> bool:
        """Probe, decide, publish; whether rank 0 asks for a pause (a new regression)."""
        pause, started = False, time.perf_counter()
        try:
            # Every rank measures (a sharded model's forwards are collectives); rank 0 alone scores.
            probe = live.watch.probe(step, self.current, self.reference, live.monitor.fitted)
            live.recorder.sync()
            if self.is_main:
                alerts = live.monitor.checkpoint(probe, live.watch)
                pause = self._pauses(alerts)
                self._publish(live, step, alerts)
        except Exception as exc:  # a failure of ours never kills the user's run
            live.monitor.record_failure(step, "probe", exc)
        live.cadence.record(time.perf_counter() - started)
        return pause

    def light(self, live: Live, step: int) -> bool | None:
        """A candidate step whose probe the budget refuses: the learning record's patterns tested on the
        watched prompts without generation (M0's answers read by the current model), when there are any.
        Whether rank 0 asks for a pause; None when no light check ran."""
        pause, tokens, grow, tok = False, list[int](), list[Any](), self.trainer.processing_class
        accelerator = self.trainer.accelerator
        if not from_rank0(accelerator, live.cadence.within_budget(light=True)):
            return None
        started = time.perf_counter()
        if self.is_main:
            try:
                tokens = live.monitor.light_tokens(step, tok)
                grow = live.monitor.prompts_to_watch(live.watch, tok) if tokens and self.grow_watch else []
            except Exception as exc:  # a failure of ours never kills the user's run
                live.monitor.record_failure(step, "light check", exc)
        tokens, grow = from_rank0(accelerator, (tokens, grow))
        if not tokens:  # no pattern is news: what ran was a learning check
            live.cadence.record_learning(time.perf_counter() - started)
            return None
        try:
            if grow:  # a one-time cost: the next light check is not expected to pay it
                prompts, answers, whole = zip(*grow)
                live.watch.grow(prompts, self.reference, answers, whole)
                live.cadence.spend(time.perf_counter() - started)
                started = time.perf_counter()
            reads = live.watch.word_logprobs(tokens, self.current)
            if self.is_main:
                alerts = live.monitor.light_check(tokens, reads, live.watch)
                pause = self._pauses(alerts)
                self._publish(live, step, alerts)
        except Exception as exc:
            live.monitor.record_failure(step, "light check", exc)
        live.cadence.record(time.perf_counter() - started, light=True)
        return pause

    def learning(self, live: Live, step: int) -> None:
        """Between probes (rank 0): what the learning record shows (no model call), as INFO alerts and
        metrics, when the probe budget allows it (its cost grows with the rows trained)."""
        if not live.cadence.learning_due():
            return
        started = time.perf_counter()
        try:
            live.recorder.store.flush()
            alerts = live.monitor.learning_check(step, self.trainer.processing_class)
            for alert in alerts:
                self.publisher.alert(alert)
            self._publish_learning(live.monitor, step)
        except Exception as exc:  # a failure of ours never kills the user's run
            live.monitor.record_failure(step, "learning check", exc)
        live.cadence.record_learning(time.perf_counter() - started)

    def _pauses(self, alerts: list[Alert]) -> bool:
        """Whether ``alerts`` ask for a pause: a new ERROR, with ``pause_on_regression``."""
        return self.pause_on_regression and any(
            a.level == "ERROR" and a.behaviour not in self.acknowledged for a in alerts
        )

    def _publish_learning(self, monitor: Monitor, step: int) -> None:
        """What the learning record shows: a few metrics and the table of its patterns."""
        self.publisher.metrics(step, learning_metrics(monitor.patterns))
        if monitor.patterns:
            self.publisher.patterns_table(step, [g.summary() for g in monitor.patterns[:20]])

    def _publish(self, live: Live, step: int, alerts: list[Alert]) -> None:
        for alert in alerts:
            self.publisher.alert(alert)
        self._publish_learning(live.monitor, step)
        self.publisher.metrics(step, checkpoint_metrics(live.monitor, step, live.cadence.summary()["share"]))
        flagged = flagged_rows(live.monitor, alerts, step)
        if flagged:
            self.publisher.rows_table(step, flagged)
        drift = live.monitor.drift_map
        if drift and drift["step"] == step:
            self.publisher.drift(step, np.asarray(drift["points"]), drift["labels"], drift["prompts"])
