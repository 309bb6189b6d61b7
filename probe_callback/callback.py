"""``ProbeCallback``: the one line a user adds to a TRL ``DPOTrainer`` script.

Example:
    >>> trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=ds,
    ...                      processing_class=tok)                                   # doctest: +SKIP
    >>> trainer.add_callback(ProbeCallback(trainer, probe_prompts=watch_prompts))  # doctest: +SKIP
    >>> trainer.train()                                                             # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import ExportableState

from .cadence import Cadence
from .capture.blocks import find_decoder_blocks
from .capture.blocks import unwrap_parallel as _unwrap
from .capture.datapoints import CapturedBatch, DatapointCapture
from .capture.rows import RowIndex, RowSet
from .config import MIN_WATCHED_PROMPTS, ProbeOptions, check_output_dir
from .decide.policy import RegressionPolicy
from .monitor import PATTERN_ALPHA, Monitor, default_threshold
from .publish.report import jsonable, summary_text, write_html, write_report
from .publish.sinks import Publisher, make_publisher
from .run.fence import FaultRecordingSink, Faults, GuardedStore, RunLocks
from .run.resume import (
    model_identity,
    options_record,
    remove_temp_files,
    roll_back_alerts,
    saved_state,
    set_aside,
    stale_store,
    warn_changed_options,
)
from .run.sharding import RankMirror, gathered
from .scoring.behaviours import fit_behaviour
from .scoring.discovery import EmergentTracker
from .scoring.probing import inference_mode
from .store.files import atomic_write_text
from .store.vectors import VectorStore
from .watch import Watch

logger = logging.getLogger("probe_callback")
# Emergent clusters are screened at this level (INFO); alarms need the source blame at the policy's level.
SCREEN_ALPHA = 0.05


def stratified_sample(prompts: list[Any], sources: list[Any], n: int, seed: int = 0) -> list[Any]:
    """Up to ``n`` distinct prompts, taken from each source in turn (every source watched, small ones whole).

    Example:
        >>> stratified_sample(["a", "b", "c", "d", "e"], ["x", "x", "x", "x", "y"], 2)
        ['d', 'e']
    """
    groups: dict[str, dict[str, Any]] = {}
    for prompt, source in zip(prompts, sources):
        groups.setdefault(json.dumps(source, sort_keys=True, default=str), {})[json.dumps(prompt, sort_keys=True)] = (
            prompt
        )
    rng = random.Random(seed)
    queues = []
    for key in sorted(groups):
        unique = list(groups[key].values())
        rng.shuffle(unique)
        queues.append(unique)
    picked: list[Any] = []
    seen: set[str] = set()
    while len(picked) < n and any(queues):
        for queue in queues:
            while queue and len(picked) < n:
                prompt = queue.pop()
                key = json.dumps(prompt, sort_keys=True)
                if key not in seen:
                    seen.add(key)
                    picked.append(prompt)
                    break
    return picked


def count_unique(prompts: Iterable[Any], enough: int) -> int:
    """How many distinct prompts ``prompts`` holds, counting no further than ``enough``.

    Example:
        >>> count_unique(["a", "b", "a"], 4), count_unique(iter("abcdef"), 4)
        (2, 4)
    """
    seen: set[str] = set()
    for prompt in prompts:
        seen.add(json.dumps(prompt, sort_keys=True, default=str))
        if len(seen) >= enough:
            break
    return len(seen)


def _is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def _fresh_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of ``model``'s weights in a new instance (a deep copy would keep TRL's patched forward)."""
    weight = next(model.parameters())
    copy_ = type(model)(copy.deepcopy(model.config)).to(device=weight.device, dtype=weight.dtype)
    copy_.load_state_dict(model.state_dict())
    return copy_.eval().requires_grad_(False)


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
        self.options = self._options(options, overrides)
        self.trainer = trainer
        self._check_trainer(trainer)
        self._check_alone(trainer)
        self.ref_model = self._reference_module(trainer)
        self.num_layers = len(find_decoder_blocks(self.ref_model))
        text_config = self.ref_model.config.get_text_config()
        self.options.validate(
            self.num_layers, text_config.hidden_size, getattr(text_config, "max_position_embeddings", None)
        )
        self.layers = self.options.resolve_layers(self.num_layers)
        self.output_dir = Path(self.options.output_dir or Path(trainer.args.output_dir) / "probe_callback")
        check_output_dir(self.output_dir)
        self.precomputed = bool(getattr(trainer.args, "precompute_ref_log_probs", False))
        self._check_behaviours(trainer)
        self._check_default_prompts()
        self.rows: RowIndex | None = None
        self.store: GuardedStore | None = None
        self.watch: Watch | None = None
        self.monitor: Monitor | None = None
        self.publisher = Publisher([])
        self.cadence: Cadence | None = None
        self.paused_at_step: int | None = None
        self.checkpoint_path: str | None = None
        self._acknowledged: set[str] = set()
        self._capture: DatapointCapture | None = None
        self._stored = RowSet()
        self.store_dim: int | None = None
        self._step = 0
        self.unmatched = 0
        self.faults = Faults()
        self._locks = RunLocks(self.output_dir)

    # ----- attach-time checks -------------------------------------------------------------------
    @staticmethod
    def _options(options: ProbeOptions | None, overrides: dict[str, Any]) -> ProbeOptions:
        """``options`` (a ``ProbeOptions``) with keyword ``overrides`` applied; unknown names are refused."""
        if options is not None and not isinstance(options, ProbeOptions):
            raise TypeError(
                f"ProbeCallback(trainer, options) takes a probe_callback.ProbeOptions, got {type(options).__name__}; "
                "or pass the options as keywords: ProbeCallback(trainer, probe_prompts=[...])."
            )
        valid = [f.name for f in fields(ProbeOptions)]
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise TypeError(
                f"unknown ProbeCallback option(s) {unknown}; valid options (ProbeOptions): {', '.join(valid)}."
            )
        return replace(options, **overrides) if options is not None else ProbeOptions(**overrides)

    @staticmethod
    def _check_trainer(trainer: Any) -> None:
        needed = ("args", "model", "train_dataset", "data_collator", "add_callback")
        if not all(hasattr(trainer, a) for a in needed) or not hasattr(trainer, "ref_model"):
            raise TypeError(
                f"ProbeCallback needs the trl.DPOTrainer it is added to, got {type(trainer).__name__}. "
                "Use: trainer.add_callback(ProbeCallback(trainer, ...))."
            )
        if not isinstance(trainer.train_dataset, datasets.Dataset):
            raise ValueError(
                f"ProbeCallback needs a map-style datasets.Dataset as train_dataset, got "
                f"{type(trainer.train_dataset).__name__} (a streaming IterableDataset has no row indices to attribute "
                "to): load the data without streaming=True."
            )

    @staticmethod
    def _check_alone(trainer: Any) -> None:
        handler = getattr(trainer, "callback_handler", None)
        if any(isinstance(cb, ProbeCallback) for cb in getattr(handler, "callbacks", [])):
            raise ValueError(
                "This trainer already has a ProbeCallback: a second one would store every vector and alert twice. "
                "Add one ProbeCallback per trainer (watch more prompts or behaviours through its options)."
            )
        if getattr(trainer.args, "restore_callback_states_from_checkpoint", False):
            raise ValueError(
                "restore_callback_states_from_checkpoint=True rebuilds callbacks without their trainer, which "
                "ProbeCallback needs. Set it to False: ProbeCallback restores its own state from the checkpoint."
            )

    def _check_behaviours(self, trainer: Any) -> None:
        """Every behaviour example must fit the context: the smaller of DPO's max_length and the model's."""
        model_context = getattr(self.ref_model.config.get_text_config(), "max_position_embeddings", None)
        limit = min((int(x) for x in (getattr(trainer.args, "max_length", None), model_context) if x), default=None)
        for b in self.options.behaviours:
            if limit:
                b.validate_lengths(trainer.processing_class, limit)

    @staticmethod
    def _reference_module(trainer: Any) -> torch.nn.Module:
        if trainer.ref_model is not None:
            return _unwrap(trainer.ref_model)
        policy = _unwrap(trainer.model)
        if _is_peft(policy):
            return policy
        if getattr(trainer.args, "precompute_ref_log_probs", False):
            # TRL used the untrained policy as the reference and kept none: keep a frozen copy of it as M0.
            logger.warning(
                "probe_callback: precompute_ref_log_probs=True without a ref_model: keeping a frozen copy of the "
                "initial policy as the reference (one more model in memory; pass ref_model=... to avoid it)."
            )
            return _fresh_copy(policy)
        raise ValueError(
            "The trainer has no reference model. Pass ref_model=... to DPOTrainer (or train a PEFT adapter, "
            "whose disabled-adapter model is the reference)."
        )

    @property
    def is_main(self) -> bool:
        return bool(self.trainer.is_world_process_zero())

    @contextlib.contextmanager
    def _reference(self) -> Iterator[torch.nn.Module]:
        """M0: the separate reference model; with PEFT, TRL's frozen "ref" copy of a pretrained adapter, else
        the policy with its adapters disabled.

        Sharded (FSDP, ZeRO-3): every rank enters together; see :func:`~probe_callback.sharding.gathered`.
        """
        trainer = self.trainer
        if trainer.ref_model is not None:
            with gathered(trainer.ref_model, trainer.accelerator) as ref:
                yield ref
        elif self.ref_model is not _unwrap(trainer.model):  # precompute: our frozen copy of the initial policy
            yield self.ref_model
        else:
            with gathered(trainer.model_wrapped, trainer.accelerator) as model:
                if "ref" in model.peft_config:
                    from trl.trainer.utils import use_adapter

                    with use_adapter(model, "ref"):
                        yield model
                else:
                    with model.disable_adapter():
                        yield model

    @contextlib.contextmanager
    def _current(self) -> Iterator[torch.nn.Module]:
        """The model being trained, ready for forwards (sharded: every rank enters together)."""
        with gathered(self.trainer.model_wrapped, self.trainer.accelerator) as model:
            yield model

    def _default_cadence(self, state: TrainerState) -> int:
        args, max_steps = self.trainer.args, max(int(state.max_steps), 1)
        for strategy, steps in ((args.eval_strategy, args.eval_steps), (args.save_strategy, args.save_steps)):
            if str(getattr(strategy, "value", strategy)) == "steps" and steps:
                n = int(steps) if steps >= 1 else round(steps * max_steps)
                if 1 <= n <= max_steps // 4:
                    return n
        return max(1, max_steps // 10)

    def _prompt_pools(self) -> list[Any]:
        """The datasets the default sample draws from: the eval split when it has a ``prompt`` column and at
        least 4 unique prompts, else the eval split and the train split together."""
        train, evaluation = self.trainer.train_dataset, self.trainer.eval_dataset
        if not isinstance(evaluation, datasets.Dataset) or "prompt" not in evaluation.column_names:
            return [train]
        if count_unique(evaluation["prompt"], MIN_WATCHED_PROMPTS) >= MIN_WATCHED_PROMPTS:
            return [evaluation]
        return [evaluation, train]

    def _check_default_prompts(self) -> None:
        """Without ``probe_prompts``, the data must offer at least 4 unique prompts to watch (refused at attach)."""
        if self.options.probe_prompts is not None:
            return
        pools = self._prompt_pools()
        if any("prompt" not in ds.column_names for ds in pools):
            raise ValueError(
                "probe_prompts is not given and the training data has no 'prompt' column to sample prompts to watch "
                f"from: pass probe_prompts=[...] with at least {MIN_WATCHED_PROMPTS} prompts."
            )
        found = count_unique((p for ds in pools for p in ds["prompt"]), MIN_WATCHED_PROMPTS)
        if found < MIN_WATCHED_PROMPTS:
            where = "eval and train data hold" if len(pools) > 1 else "train data holds"
            raise ValueError(
                f"probe_prompts is not given and the {where} only {found} unique prompt(s) to sample from: "
                f"emergent discovery needs at least {MIN_WATCHED_PROMPTS} watched prompts. Pass "
                f"probe_prompts=[...] with at least {MIN_WATCHED_PROMPTS} prompts of the kind you want watched."
            )

    def _sample_prompts(self) -> list[Any]:
        if self.options.probe_prompts is not None:
            return list(self.options.probe_prompts)
        prompts: list[Any] = []
        sources: list[Any] = []
        column = self.options.source_column
        for ds in self._prompt_pools():
            prompts += list(ds["prompt"])
            sources += list(ds[column]) if column in ds.column_names else [None] * len(ds)
        return stratified_sample(prompts, sources, self.options.n_probe_prompts, self.options.seed)

    # ----- trainer events -----------------------------------------------------------------------
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        self._step, started = state.global_step, False
        try:
            if self._fence(args, state):
                self._begin(args, state)
                started = True
        except Exception as exc:  # a failure of ours never kills the user's run
            logger.error("probe_callback: could not start (%r); training goes on without it", exc, exc_info=True)
        if not self._all(started):  # every rank goes on with the callback, or none does
            self.close()
            self._locks.release()
            self.monitor = None

    def _fence(self, args: TrainingArguments, state: TrainerState) -> bool:
        """Lock the output folder for this run; stand down (every rank) if another run holds it."""
        held = self._locks.acquire(int(args.process_index), self.is_main, self.faults, state.global_step)
        if not self._all(held):
            logger.error(
                "probe_callback: another run (or another ProbeCallback) is writing to %s; this run trains without "
                "the callback. Give each run its own output_dir.",
                self.output_dir,
            )
            self._locks.release()
            return False
        if self.is_main:
            remove_temp_files(self.output_dir)
        return True

    def _all(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every rank."""
        if self.trainer.accelerator.num_processes == 1:
            return flag
        from accelerate.utils import gather_object

        return all(gather_object([flag]))

    def _begin(self, args: TrainingArguments, state: TrainerState) -> None:
        self.rows = RowIndex.from_trainer(self.trainer, self.options.id_column, self.options.source_column)
        hidden = int(self.ref_model.config.get_text_config().hidden_size)
        self.store = GuardedStore(None, self.faults, lambda: self._step)
        with self.faults.guard("vectors", state.global_step):
            store = VectorStore.create(
                self._store_dir(state.global_step),
                layers=self.layers,
                hidden=hidden,
                projection_dim=self.options.projection_dim,
                projection_seed=self.options.seed,
                rank=int(args.process_index),
            )
            self.store = GuardedStore(store, self.faults, lambda: self._step)
        if self.is_main:
            with self.faults.guard("alerts.jsonl", state.global_step):
                self._roll_back_alerts(state.global_step)
        self.store.truncate_steps_after(state.global_step)
        self._stored = RowSet(self.store.row_ids())
        folder = self.output_dir / "vectors" / f"rank-{int(args.process_index):05d}"
        self._mirror = RankMirror(folder, self.trainer.accelerator, per_node=args.save_on_each_node)
        self.store_dim = self.store.dim
        policy = _unwrap(self.trainer.model)
        blocks = [find_decoder_blocks(self.ref_model)[layer - 1] for layer in self.layers]
        self._capture = DatapointCapture(
            self.ref_model, blocks, self._on_batch, policy=policy, reference_per_step=not self.precomputed
        ).__enter__()
        if self.precomputed:
            self._datapoint_pass()
        built = time.perf_counter()
        self._start_monitor(args, state)
        setup, opts = time.perf_counter() - built, self.options
        self.cadence = Cadence(
            every=opts.every_n_steps or self._default_cadence(state),
            budget=None if opts.every_n_steps else opts.probe_budget,
            # the set-up pass (M0's answers, read through M0) costs about two thirds of a probe; a light
            # check (one teacher-forced pass, no generation) about a quarter of it
            expected_seconds=1.5 * setup,
            light_seconds=0.25 * setup,
        )
        self._log_start()
        self.cadence.start()

    def _store_dir(self, step: int) -> Path:
        """The store of this dataset and reference model. Another run's store (other data, say before a
        mitigation; another model; or any store when this run starts fresh) is set aside as
        ``vectors-before-step-N``, never mixed in."""
        folder = self.output_dir / "vectors"
        writes = self.trainer.args.should_save  # rank 0, or each node's first rank with per-node output folders
        stamps = {"dataset": self.rows.fingerprint, "model": model_identity(self.ref_model)}
        if writes:
            why = stale_store(folder, stamps, step)
            if why:
                aside = set_aside(folder, f"before-step-{step}")
                logger.warning("probe_callback: %s; the old vector store moves to %s", why, aside)
        self.trainer.accelerator.wait_for_everyone()
        folder.mkdir(parents=True, exist_ok=True)
        if writes:
            for name, text in stamps.items():
                atomic_write_text(folder / f"{name}.txt", text)
        return folder

    def _roll_back_alerts(self, step: int) -> None:
        """A resume raises the alerts after its step again, so they are dropped; a fresh run sets old ones aside."""
        path = self.output_dir / "alerts.jsonl"
        if step > 0:
            roll_back_alerts(path, step)
        elif path.exists():
            set_aside(path, "before-step-0")

    def _start_monitor(self, args: TrainingArguments, state: TrainerState) -> None:
        tok, opts = self.trainer.processing_class, self.options
        step = state.global_step
        saved = saved_state(state.stateful_callbacks, self.output_dir, step) if step > 0 else None
        with self._reference() as ref:
            fitted = [
                fit_behaviour(b, ref, tok, self.layers, opts.probe_batch_size, opts.seed) for b in opts.behaviours
            ]
        overrides = {f.behaviour.name: {"threshold": default_threshold(f)} for f in fitted}
        for name, values in opts.policy.get("overrides", {}).items():
            overrides[name] = {**overrides.get(name, {}), **values}
        self.watch = Watch.build(
            saved["prompts"] if saved else self._sample_prompts(),
            tok,
            self._reference,
            self.layers,
            opts.max_new_tokens,
            opts.probe_batch_size,
            r0=saved["r0"] if saved else None,
        )
        policy = RegressionPolicy(**{**opts.policy, "overrides": overrides})
        self.monitor = Monitor(
            fitted,
            EmergentTracker(alpha=SCREEN_ALPHA, seed=opts.seed),
            policy,
            self.rows,
            self.output_dir / "vectors",
            self.layers,
            opts.top_k,
            opts.seed,
        )
        if saved:
            self.monitor.restore(saved["monitor"])
            settings = {k: v for k, v in policy.state().items() if k != "tracks"}  # this run's policy wins
            self.monitor.policy = RegressionPolicy.from_state({**saved["monitor"]["policy"], **settings})
            warn_changed_options(saved, opts)
            self._acknowledged = {b["name"] for b in saved["monitor"]["behaviours"].values() if b["flagged_at_step"]}
        self.publisher = make_publisher(args, self.output_dir, self.is_main)
        self.publisher.sinks = [FaultRecordingSink(s, self.faults, lambda: self._step) for s in self.publisher.sinks]

    def _log_start(self) -> None:
        if self.is_main:
            budget = self.cadence.budget
            logger.info(
                "probe_callback: watching %d prompts at layers %s every %d steps%s; output in %s",
                len(self.watch.prompts),
                self.layers,
                self.cadence.every,
                f" while probes take at most {budget:.0%} of the training time" if budget else "",
                self.output_dir,
            )

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        self._step = state.global_step + 1
        if self._capture is not None:
            self._capture.active = True

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        if self._capture is not None:
            self._capture.active = False
        if self.store is not None:
            self.store.flush()
        if self.monitor is None or not self.cadence.candidate(state.global_step):
            return
        if self._agree(self.cadence.within_budget()):
            self._checkpoint(state, control)
        elif self.cadence.budget is not None:
            self._light_check(state, control)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        """Between probes: what the learning record shows (free), as INFO alerts and metrics."""
        if not self.is_main or self.monitor is None or self.monitor.last_step == state.global_step:
            return  # (a probe at this step already read the learning record)
        try:
            self.store.flush()
            alerts = self.monitor.learning_check(state.global_step, self.trainer.processing_class)
            for alert in alerts:
                self.publisher.alert(alert)
            self._publish_learning(state.global_step)
        except Exception as exc:  # a failure of ours never kills the user's run
            self.monitor.record_failure(state.global_step, "learning check", exc)

    def _publish_learning(self, step: int) -> None:
        """What the learning record shows: a few metrics and the table of its patterns."""
        patterns = self.monitor.patterns
        self.publisher.metrics(
            step,
            {
                "learning/patterns": float(len(patterns)),
                "learning/significant": float(sum(g.p_value <= PATTERN_ALPHA for g in patterns)),
                "learning/best_p_value": float(min((g.p_value for g in patterns), default=1.0)),
            },
        )
        if patterns:
            self.publisher.patterns_table(step, [g.summary() for g in patterns[:20]])

    def _checkpoint(self, state: TrainerState, control: TrainerControl) -> None:
        """Probe, decide, publish; ask the trainer to save and stop on a new regression."""
        pause, started = False, time.perf_counter()
        try:
            # Every rank measures (a sharded model's forwards are collectives); rank 0 alone scores.
            probe = self.watch.probe(state.global_step, self._current, self._reference, self.monitor.fitted)
            self._mirror.sync()
            if self.is_main:
                alerts = self.monitor.checkpoint(probe, self.watch)
                pause = self._pauses(alerts)
                self._publish(state.global_step, alerts)
        except Exception as exc:  # a failure of ours never kills the user's run
            self.monitor.record_failure(state.global_step, "probe", exc)
        self.cadence.record(time.perf_counter() - started)
        self._settle(state, control, pause)

    def _light_check(self, state: TrainerState, control: TrainerControl) -> None:
        """A candidate step whose probe the budget refuses: the learning record's patterns tested on the
        watched prompts without generation (M0's answers read by the current model), when there are any."""
        step, pause, tokens = state.global_step, False, []
        if self.is_main:
            try:
                tokens = self.monitor.light_tokens(step, self.trainer.processing_class)
            except Exception as exc:  # a failure of ours never kills the user's run
                self.monitor.record_failure(step, "light check", exc)
        tokens = self._from_main(tokens)
        if not tokens or not self._agree(self.cadence.within_budget(light=True)):
            return
        started = time.perf_counter()
        try:
            now, before = self.watch.word_logprobs(tokens, self._current)
            if self.is_main:
                alerts = self.monitor.light_check(tokens, now, before, self.watch)
                pause = self._pauses(alerts)
                self._publish(step, alerts)
        except Exception as exc:
            self.monitor.record_failure(step, "light check", exc)
        self.cadence.record(time.perf_counter() - started, light=True)
        self._settle(state, control, pause)

    def _pauses(self, alerts: list) -> bool:
        """Whether ``alerts`` ask for a pause: a new ERROR, with ``pause_on_regression``."""
        return self.options.pause_on_regression and any(
            a.level == "ERROR" and a.behaviour not in self._acknowledged for a in alerts
        )

    def _settle(self, state: TrainerState, control: TrainerControl, pause: bool) -> None:
        """After a probe or light check: pause every rank when rank 0 asks; write the report."""
        if self._agree(pause):
            self._complete_attribution()
            self.paused_at_step = state.global_step
            self.checkpoint_path = str(Path(self.trainer.args.output_dir) / f"checkpoint-{state.global_step}")
            control.should_save = True
            control.should_training_stop = True
        self._write_report()

    def _complete_attribution(self) -> None:
        """Before pausing: vectors for the rows not trained on yet, then rank every row again."""
        try:
            self._datapoint_pass()
            self._mirror.sync()
            self._stored = RowSet(self.store.row_ids())
            if self.is_main:
                self.monitor.reattribute()
        except Exception as exc:
            logger.warning("probe_callback: could not rank the rows not trained on yet: %r", exc)

    def _agree(self, flag: bool) -> bool:
        """Rank 0's decision, on every rank (so every rank stops at the same step)."""
        return bool(self._from_main(flag))

    def _from_main(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (a picklable object)."""
        if self.trainer.accelerator.num_processes == 1:
            return value
        from accelerate.utils import broadcast_object_list

        box = [value]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def _publish(self, step: int, alerts: list) -> None:
        for alert in alerts:
            self.publisher.alert(alert)
        self._publish_learning(step)
        metrics: dict[str, float] = {
            "clusters": float(sum(b.significant for b in self.monitor.tracker.behaviours.values())),
        }
        history = self.monitor.prompt_drift_history
        if history and history[-1]["step"] == step:
            metrics.update({f"prompt_drift/{k}": history[-1][k] for k in ("median", "p90", "max")})
        share = self.cadence.summary()["share"]
        if share is not None:
            metrics["cost_share"] = float(share)
        for name, entry in self.monitor.behaviours.items():
            if entry["score_history"] and entry["score_history"][-1][0] == step:
                metrics[f"{name}/score"] = float(entry["score_history"][-1][1])
                if entry["p_value"] is not None:
                    metrics[f"{name}/p_value"] = float(entry["p_value"])
        self.publisher.metrics(step, metrics)
        flagged = [r for a in alerts if a.level == "ERROR" for r in self.monitor.behaviours[a.behaviour]["top_rows"]]
        if flagged:
            self.publisher.rows_table(step, [{"step": step, **r} for r in flagged])
        drift = self.monitor.drift_map
        if drift and drift["step"] == step:
            self.publisher.drift(step, np.asarray(drift["points"]), drift["labels"], drift["prompts"])

    def report(self) -> dict[str, Any]:
        """The current report as a dict (the content of ``report.json``)."""
        if self.monitor is None:
            return {"version": 1, "paused_at_step": None, "checkpoint": None, "behaviours": []}
        report = self.monitor.report(self.paused_at_step, self.checkpoint_path)
        report["store"] = {"rows": len(self._stored), "dim": self.store_dim}
        report["every_n_steps"] = self.cadence.every if self.cadence else None
        report["cost"] = self.cadence.summary() if self.cadence else {}
        report["trained_to_step"] = self._step
        report["not_recorded"] = self.faults.report()
        return report

    def _write_report(self) -> None:
        if not self.is_main or self.monitor is None:  # never started (or stood down): the folder is not ours
            return
        with self.faults.guard("report", self._step):
            report = self.report()
            write_report(report, self.output_dir)
            write_html(report, self.output_dir)

    # ----- resume -------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The callback's state at a checkpoint; the Trainer saves it in that checkpoint's ``trainer_state.json``."""
        snapshot: dict[str, Any] = {}
        if self.monitor is not None and self.is_main:
            step = self.trainer.state.global_step
            with self.faults.guard("state", step):
                snapshot = {
                    "probe_state": jsonable(
                        {
                            "step": step,
                            "prompts": self.watch.prompts,
                            "r0": self.watch.r0,
                            "monitor": self.monitor.state(),
                            "options": options_record(self.options),
                        }
                    )
                }
        return {"args": {}, "attributes": snapshot}

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        self._write_report()

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        if self.cadence is not None:
            self.cadence.stop()
        self._write_report()
        if self.is_main and self.monitor is not None:
            logger.warning("probe_callback report:\n%s", summary_text(self.report()))
            if self.paused_at_step is not None:
                logger.warning(self._next_steps())
        self.publisher.close()
        self.close()
        self._locks.release()

    def _next_steps(self) -> str:
        out = self.output_dir
        return (
            f"Training paused at step {self.paused_at_step}; checkpoint {self.checkpoint_path}.\n"
            f"  See {out / 'report.html'}\n"
            f"  Clean the data:  probe-callback mitigate --report {out / 'report.json'} --dataset TRAIN.jsonl "
            "--action filter --top-frac 0.05 -o cleaned.jsonl\n"
            f"  Resume:          trainer.train(resume_from_checkpoint={self.checkpoint_path!r})"
        )

    def close(self) -> None:
        """Remove the hooks and close the store (also done at train end)."""
        if self._capture is not None:
            self._capture.__exit__(None, None, None)
            self._capture = None
        if self.store is not None:
            self.store.close()
            self.store = None
        if self.unmatched:
            logger.warning("probe_callback: %d batch rows matched no dataset row and were skipped.", self.unmatched)

    # ----- capture ------------------------------------------------------------------------------
    def _on_batch(self, batch: CapturedBatch) -> None:
        with self.faults.guard("vectors", self._step):  # runs inside the trainer's forward: never raise
            self._record_batch(batch)

    def _record_batch(self, batch: CapturedBatch) -> None:
        rows = self.rows.lookup(batch.input_ids, batch.attention_mask)
        known = rows >= 0
        self.unmatched += int((~known).sum())
        if self._step > 0:  # step 0 is the datapoint pass at train begin, not a training batch
            record = batch.learning.numpy() if batch.learning is not None else {"rise": np.zeros(len(rows), np.float32)}
            record = {k: v[known] for k, v in record.items()}
            self.store.append_memberships(rows[known], np.full(known.sum(), self._step), record.pop("rise"), record)
        if batch.pooled is None:
            return
        half = len(rows)
        diff = (batch.pooled[:half] - batch.pooled[half:]).numpy()
        fresh = np.array([r >= 0 and int(r) not in self._stored for r in rows])
        if fresh.any():
            self.store.append_vectors(rows[fresh], diff[fresh])
            self._stored.update(int(r) for r in rows[fresh])

    def _datapoint_pass(self) -> None:
        """A reference pass over the training rows that have no stored vector yet.

        Made at train begin when DPO precomputes its reference log-probs (no reference forward per
        step), and at a pause, so the report ranks every row, not only those trained on so far.
        Ranks split the batches of the rows rank 0 sees no vector for; every rank makes as many
        forwards (a rank out of batches repeats one, not captured), as a sharded model needs.
        """
        if not self._all(self.store.path is not None):  # every rank skips together (a collective follows)
            return
        args, ds = (
            self.trainer.args,
            self.trainer.train_dataset.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"]),
        )
        self.store.flush()
        self.trainer.accelerator.wait_for_everyone()
        stored = RowSet(VectorStore.open(self.store.path).row_ids()) if self.is_main else RowSet()
        todo = self._from_main(np.flatnonzero(~stored.contains(self.rows.order)).tolist() if self.is_main else None)
        bs, world = args.per_device_train_batch_size, args.world_size
        batches = [todo[start : start + bs] for start in range(0, len(todo), bs)]
        mine = batches[args.process_index :: world]
        capture, saved = self._capture, (self._capture.reference_per_step, self._step)
        capture.reference_per_step, self._step = True, 0  # step 0: no batch membership
        try:
            with self._reference() as ref, inference_mode(ref):
                device = next(ref.parameters()).device
                for k in range(-(-len(batches) // world)):
                    capture.active = k < len(mine)
                    batch = self.trainer.data_collator([ds[i] for i in (mine[k] if capture.active else batches[0])])
                    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
                    ref(
                        input_ids=batch["input_ids"].to(device),
                        attention_mask=batch["attention_mask"].to(device),
                        labels=labels.to(device),
                        use_cache=False,
                    )
        finally:
            capture.reference_per_step, self._step = saved
            capture.active = False
        self.store.flush()
        self.trainer.accelerator.wait_for_everyone()
