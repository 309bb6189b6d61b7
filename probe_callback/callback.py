"""``ProbeCallback``: the one line a user adds to a TRL ``DPOTrainer`` script.

Example:
    >>> trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=ds,
    ...                      processing_class=tok)                                   # doctest: +SKIP
    >>> trainer.add_callback(ProbeCallback(trainer, probe_prompts=watch_prompts))  # doctest: +SKIP
    >>> trainer.train()                                                             # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import ExportableState

from .attach import (
    check_behaviours,
    check_default_prompts,
    check_trainer,
    default_cadence,
    reference_module,
    resolve_options,
    warn_moving_reference,
    watched_prompts,
)
from .capture.blocks import find_decoder_blocks, unwrap_parallel
from .capture.rows import RowIndex
from .capture.text import conversational
from .checks import Checks
from .config import ProbeOptions, check_output_dir
from .decide.cadence import Cadence
from .decide.policy import RegressionPolicy
from .monitor import Monitor, default_threshold
from .publish.report import jsonable, next_steps_text, summary_text, write_html, write_report
from .publish.sinks import make_publisher
from .run.fence import FaultRecordingSink, Faults, GuardedStore, RunLocks
from .run.recording import Recorder
from .run.resume import (
    model_identity,
    options_record,
    restart_alerts,
    saved_state,
    store_folder,
    warn_changed_options,
)
from .run.sharding import RankMirror, from_rank0, gathered, on_every_rank, reference_model
from .scoring.behaviours import fit_behaviour
from .scoring.discovery import EmergentTracker
from .scoring.watch import Watch
from .store.vectors import VectorStore

logger = logging.getLogger("probe_callback")
# Emergent clusters are screened at this level (INFO); alarms need the source blame at the policy's level.
SCREEN_ALPHA = 0.05


@dataclass
class Live:
    """What a callback holds while its run trains (built at train begin, one object)."""

    rows: RowIndex
    recorder: Recorder
    watch: Watch
    monitor: Monitor
    cadence: Cadence


class ProbeCallback(TrainerCallback, ExportableState):
    """Probe a DPO run live: capture datapoint vectors, probe checkpoints, alert, pause, attribute.

    ``trainer``: the ``trl.DPOTrainer`` this callback is added to. ``options``: see
    :class:`~probe_callback.config.ProbeOptions` (``probe_prompts``, ``behaviours``,
    ``every_n_steps``, ``pause_on_regression``, ``output_dir``, ``layers``, ...).

    With ``precompute_ref_log_probs=True`` DPO makes no reference forward per step, so the datapoint
    vectors come from one pass over the training rows at train begin (about the cost of TRL's own
    precompute pass); batch membership is still recorded every step.
    """

    def __init__(self, trainer: Any, options: ProbeOptions | None = None, **overrides: Any) -> None:
        self.options = resolve_options(options, overrides)
        self.trainer = trainer
        check_trainer(trainer, ProbeCallback)
        warn_moving_reference(trainer.args)
        self.ref_model: Any = reference_module(trainer)  # an HF causal LM
        self.num_layers = len(find_decoder_blocks(self.ref_model))
        config: Any = self.ref_model.config
        text_config = config.get_text_config()
        self.options.validate(
            self.num_layers, text_config.hidden_size, getattr(text_config, "max_position_embeddings", None)
        )
        self.layers = self.options.resolve_layers(self.num_layers)
        self.output_dir = Path(self.options.output_dir or Path(trainer.args.output_dir) / "probe_callback")
        check_output_dir(self.output_dir)
        self.precomputed = bool(getattr(trainer.args, "precompute_ref_log_probs", False))
        check_behaviours(self.options, self.ref_model, trainer)
        check_default_prompts(self.options, trainer)
        self.live: Live | None = None
        self.checks = Checks(
            trainer,
            self._reference,
            self._current,
            self.options.pause_on_regression,
            grow_watch=self.options.probe_prompts is None,
        )
        self.paused_at_step: int | None = None
        self.checkpoint_path: str | None = None
        self._step = 0
        self.faults = Faults()
        self._locks = RunLocks(self.output_dir)

    # ----- train-time state ---------------------------------------------------------------------
    @property
    def rows(self) -> RowIndex | None:
        return self.live.rows if self.live else None

    @property
    def recorder(self) -> Recorder | None:
        return self.live.recorder if self.live else None

    @property
    def watch(self) -> Watch | None:
        return self.live.watch if self.live else None

    @property
    def monitor(self) -> Monitor | None:
        return self.live.monitor if self.live else None

    @property
    def cadence(self) -> Cadence | None:
        return self.live.cadence if self.live else None

    @property
    def is_main(self) -> bool:
        return bool(self.trainer.is_world_process_zero())

    def _reference(self) -> AbstractContextManager[torch.nn.Module]:
        """M0, ready for forwards (see :func:`~probe_callback.run.sharding.reference_model`)."""
        return reference_model(self.trainer, self.ref_model)

    def _current(self) -> AbstractContextManager[torch.nn.Module]:
        """The model being trained, ready for forwards (sharded: every rank enters together)."""
        return gathered(self.trainer.model_wrapped, self.trainer.accelerator)

    # ----- trainer events -----------------------------------------------------------------------
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        self._step, started = state.global_step, False
        try:
            if self._locks.fence(
                self.trainer.accelerator, int(args.process_index), self.is_main, self.faults, state.global_step
            ):
                self._begin(args, state)
                started = True
        except Exception as exc:  # a failure of ours never kills the user's run
            logger.error("probe_callback: could not start (%r); training goes on without it", exc, exc_info=True)
        if not self._all(started):  # every rank goes on with the callback, or none does
            self.close()
            self._locks.release()
            self.live = None

    def _all(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every rank."""
        return on_every_rank(self.trainer.accelerator, flag)

    def _begin(self, args: TrainingArguments, state: TrainerState) -> None:
        rows = RowIndex.from_trainer(self.trainer, self.options.id_column, self.options.source_column)
        recorder = self._start_recording(args, state, rows)
        try:
            if self.precomputed:
                recorder.datapoint_pass(self.trainer, self._reference, self.is_main)
            built = time.perf_counter()
            watch, monitor = self._start_monitor(args, state, rows)
        except BaseException:
            recorder.close()  # the hooks never outlive a failed start
            raise
        setup, opts = time.perf_counter() - built, self.options
        cadence = Cadence(
            every=opts.every_n_steps or default_cadence(self.trainer.args, state.max_steps),
            budget=None if opts.every_n_steps else opts.probe_budget,
            # the set-up pass (M0's answers, read through M0) costs about two thirds of a probe; a light
            # check (one teacher-forced pass, no generation) about a quarter of it
            expected_seconds=1.5 * setup,
            light_seconds=0.25 * setup,
        )
        self.live = Live(rows, recorder, watch, monitor, cadence)
        if self.is_main:
            logger.info(
                "probe_callback: watching %d prompts at layers %s every %d steps%s; output in %s",
                len(watch.prompts),
                self.layers,
                cadence.every,
                f" while probes take at most {cadence.budget:.0%} of the training time" if cadence.budget else "",
                self.output_dir,
            )
        cadence.start()

    def _start_recording(self, args: TrainingArguments, state: TrainerState, rows: RowIndex) -> Recorder:
        """The vector store of this run (a resume truncates it to its step) and the hooks that fill it."""
        guarded = GuardedStore(None, self.faults, lambda: self._step)
        stamps = {"dataset": rows.fingerprint, "model": model_identity(self.ref_model)}  # another run's store: aside
        with self.faults.guard("vectors", state.global_step):
            store = VectorStore.create(
                store_folder(self.output_dir / "vectors", self.trainer, stamps, state.global_step),
                layers=self.layers,
                hidden=int(self.ref_model.config.get_text_config().hidden_size),
                projection_dim=self.options.projection_dim,
                projection_seed=self.options.seed,
                rank=int(args.process_index),
            )
            guarded = GuardedStore(store, self.faults, lambda: self._step)
        if self.is_main:
            with self.faults.guard("alerts.jsonl", state.global_step):
                restart_alerts(self.output_dir / "alerts.jsonl", state.global_step)
        guarded.truncate_steps_after(state.global_step)
        recorder = Recorder(rows, guarded, self.faults, lambda: self._step)
        folder = self.output_dir / "vectors" / f"rank-{int(args.process_index):05d}"
        recorder.start(
            self.ref_model,
            [find_decoder_blocks(self.ref_model)[layer - 1] for layer in self.layers],
            unwrap_parallel(self.trainer.model),
            reference_per_step=not self.precomputed,
            mirror=RankMirror(folder, self.trainer.accelerator, per_node=args.save_on_each_node),
        )
        return recorder

    def _start_monitor(self, args: TrainingArguments, state: TrainerState, rows: RowIndex) -> tuple[Watch, Monitor]:
        """The watched prompts with M0's answers, and the monitor (restored from the checkpoint on a resume)."""
        tok, opts = self.trainer.processing_class, self.options
        step = state.global_step
        saved = saved_state(state.stateful_callbacks, self.output_dir, step) if step > 0 else None
        chat = conversational(self.trainer.train_dataset)  # TRL's standard format reads prompts as plain text
        with self._reference() as ref:
            fitted = [
                fit_behaviour(b, ref, tok, self.layers, opts.probe_batch_size, opts.seed, chat) for b in opts.behaviours
            ]
        overrides = {f.behaviour.name: {"threshold": default_threshold(f)} for f in fitted}
        for name, values in opts.policy.get("overrides", {}).items():
            overrides[name] = {**overrides.get(name, {}), **values}
        watch = Watch.build(
            saved["prompts"] if saved else watched_prompts(opts, self.trainer),
            tok,
            self._reference,
            self.layers,
            opts.max_new_tokens,
            opts.probe_batch_size,
            r0=saved["r0"] if saved else None,
            complete=saved.get("complete") if saved else None,
            chat=chat,
        )
        watch.grown = saved.get("grown", 0) if saved else 0
        policy = RegressionPolicy(**{**opts.policy, "overrides": overrides})
        monitor = Monitor(
            fitted,
            EmergentTracker(alpha=SCREEN_ALPHA, seed=opts.seed),
            policy,
            rows,
            self.output_dir / "vectors",
            self.layers,
            opts.top_k,
            opts.seed,
        )
        if saved:
            monitor.restore(saved["monitor"])
            settings = {k: v for k, v in policy.state().items() if k != "tracks"}  # this run's policy wins
            monitor.policy = RegressionPolicy.from_state({**saved["monitor"]["policy"], **settings})
            warn_changed_options(saved, opts)
            self.checks.acknowledged = {
                b["name"] for b in saved["monitor"]["behaviours"].values() if b["flagged_at_step"]
            }
        publisher = self.checks.publisher = make_publisher(args, self.output_dir, self.is_main)
        publisher.sinks = [FaultRecordingSink(s, self.faults, lambda: self._step) for s in publisher.sinks]  # type: ignore[misc]
        return watch, monitor

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        self._step = state.global_step + 1
        if self.live is not None:
            self.live.recorder.active(True)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        live = self.live
        if live is None:
            return
        live.recorder.active(False)
        live.recorder.store.flush()
        if not live.cadence.candidate(state.global_step):
            return
        if self._agree(live.cadence.within_budget()):
            self._settle(live, state, control, self.checks.probe(live, state.global_step))
        elif live.cadence.budget is not None:
            pause = self.checks.light(live, state.global_step)
            if pause is not None:
                self._settle(live, state, control, pause)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        """Between probes: what the learning record shows (no model call), as INFO alerts and metrics."""
        live = self.live
        # (a probe at this step already read the learning record)
        if self.is_main and live is not None and live.monitor.last_step != state.global_step:
            self.checks.learning(live, state.global_step)

    def _settle(self, live: Live, state: TrainerState, control: TrainerControl, pause: bool) -> None:
        """After a probe or light check: pause every rank when rank 0 asks; write the report."""
        if self._agree(pause):
            self._complete_attribution(live)
            self.paused_at_step = state.global_step
            self.checkpoint_path = str(Path(self.trainer.args.output_dir) / f"checkpoint-{state.global_step}")
            control.should_save = True
            control.should_training_stop = True
        self._write_report()

    def _complete_attribution(self, live: Live) -> None:
        """Before pausing: vectors for the rows not trained on yet, then rank every row again."""
        try:
            live.recorder.datapoint_pass(self.trainer, self._reference, self.is_main)
            if self.is_main:
                live.monitor.reattribute()
        except Exception as exc:
            logger.warning("probe_callback: could not rank the rows not trained on yet: %r", exc)

    def _agree(self, flag: bool) -> bool:
        """Rank 0's decision, on every rank (so every rank stops at the same step)."""
        return bool(from_rank0(self.trainer.accelerator, flag))

    def report(self) -> dict[str, Any]:
        """The current report as a dict (the content of ``report.json``)."""
        live = self.live
        if live is None:
            return {"version": 1, "paused_at_step": None, "checkpoint": None, "behaviours": []}
        report = live.monitor.report(self.paused_at_step, self.checkpoint_path)
        report["store"] = {"rows": len(live.recorder.stored), "dim": live.recorder.store.dim}
        report["every_n_steps"] = live.cadence.every
        report["cost"] = live.cadence.summary()
        report["trained_to_step"] = self._step
        report["not_recorded"] = self.faults.report()
        return report

    def _write_report(self) -> None:
        if not self.is_main or self.live is None:  # never started (or stood down): the folder is not ours
            return
        with self.faults.guard("report", self._step):
            report = self.report()
            write_report(report, self.output_dir)
            write_html(report, self.output_dir)

    # ----- resume -------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The callback's state at a checkpoint; the Trainer saves it in that checkpoint's ``trainer_state.json``."""
        snapshot: dict[str, Any] = {}
        live = self.live
        if live is not None and self.is_main:
            step = self.trainer.state.global_step
            with self.faults.guard("state", step):
                snapshot = {
                    "probe_state": jsonable(
                        {
                            "step": step,
                            "prompts": live.watch.prompts,
                            "r0": live.watch.r0,
                            "complete": live.watch.complete,
                            "grown": live.watch.grown,
                            "monitor": live.monitor.state(),
                            "options": options_record(self.options),
                        }
                    )
                }
        return {"args": {}, "attributes": snapshot}

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        self._write_report()

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        if self.live is not None:
            self.live.cadence.stop()
            if self.is_main and self.paused_at_step is None:  # a pause ranked them already
                with self.faults.guard("final ranking", self._step):
                    self.live.monitor.reattribute()  # the final report ranks every stored row, not a light check's
        self._write_report()
        if self.is_main and self.live is not None:
            logger.warning("probe_callback report:\n%s", summary_text(self.report()))
            if self.paused_at_step is not None:
                logger.warning(next_steps_text(self.output_dir, self.report()))
        self.checks.publisher.close()
        self.close()
        self._locks.release()

    def close(self) -> None:
        """Remove the hooks and close the store (also done at train end)."""
        if self.live is not None:
            self.live.recorder.close()
