"""What :class:`~probe_callback.callback.ProbeCallback` checks and chooses when it is attached: the
options, the trainer, the reference model (M0), the prompts to watch and the probe cadence.

Every refusal here happens at ``ProbeCallback(trainer, ...)``, before any training step, and names
the problem and the fix.

Example:
    >>> stratified_sample(["a", "b", "c", "d", "e"], ["x", "x", "x", "x", "y"], 2)
    ['d', 'e']
"""

from __future__ import annotations

import copy
import json
import logging
import random
from collections.abc import Iterable
from dataclasses import fields, replace
from typing import Any

import datasets
import torch

from .capture.blocks import unwrap_parallel
from .config import MIN_WATCHED_PROMPTS, ProbeOptions

logger = logging.getLogger("probe_callback")


def resolve_options(options: ProbeOptions | None, overrides: dict[str, Any]) -> ProbeOptions:
    """``options`` (a ``ProbeOptions``) with keyword ``overrides`` applied; unknown names are refused.

    Example:
        >>> resolve_options(None, {"every_n_steps": 5}).every_n_steps
        5
    """
    if options is not None and not isinstance(options, ProbeOptions):
        raise TypeError(
            f"ProbeCallback(trainer, options) takes a probe_callback.ProbeOptions, got {type(options).__name__}; "
            "or pass the options as keywords: ProbeCallback(trainer, probe_prompts=[...])."
        )
    valid = [f.name for f in fields(ProbeOptions)]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise TypeError(f"unknown ProbeCallback option(s) {unknown}; valid options (ProbeOptions): {', '.join(valid)}.")
    return replace(options, **overrides) if options is not None else ProbeOptions(**overrides)


def check_trainer(trainer: Any, kind: type) -> None:
    """A ``trl.DPOTrainer`` with a map-style dataset, and no other callback of ``kind`` on it."""
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
    handler = getattr(trainer, "callback_handler", None)
    if any(isinstance(cb, kind) for cb in getattr(handler, "callbacks", [])):
        raise ValueError(
            "This trainer already has a ProbeCallback: a second one would store every vector and alert twice. "
            "Add one ProbeCallback per trainer (watch more prompts or behaviours through its options)."
        )
    if getattr(trainer.args, "restore_callback_states_from_checkpoint", False):
        raise ValueError(
            "restore_callback_states_from_checkpoint=True rebuilds callbacks without their trainer, which "
            "ProbeCallback needs. Set it to False: ProbeCallback restores its own state from the checkpoint."
        )


def check_behaviours(options: ProbeOptions, ref_model: torch.nn.Module, trainer: Any) -> None:
    """Every behaviour example must fit the context: the smaller of DPO's max_length and the model's."""
    config: Any = ref_model.config
    model_context = getattr(config.get_text_config(), "max_position_embeddings", None)
    limit = min((int(x) for x in (getattr(trainer.args, "max_length", None), model_context) if x), default=None)
    for b in options.behaviours:
        if limit:
            b.validate_lengths(trainer.processing_class, limit)


def warn_moving_reference(args: Any) -> None:
    """Warn that with TRL's ``sync_ref_model=True`` (TR-DPO) the reference moves towards the policy.

    Every ``ref_model_sync_steps`` steps TRL mixes the policy into the reference, so DPO's own rises, which the
    learning record reads, count only the learning since the last mix: the rows a behaviour comes from stand
    out less after each one. The watched prompts keep M0's answers from the start.
    """
    if getattr(args, "sync_ref_model", False):
        logger.warning(
            "probe_callback: sync_ref_model=True moves the reference towards the policy every %s steps (alpha "
            "%s): the learning record then counts only what was learned since the last sync, so the rows of a "
            "behaviour learned before it stand out less, and an alarm may come later or not at all.",
            getattr(args, "ref_model_sync_steps", "?"),
            getattr(args, "ref_model_mixup_alpha", "?"),
        )


def reference_module(trainer: Any) -> torch.nn.Module:
    """M0 as a module: the trainer's ``ref_model``, the PEFT policy (adapters off), or with
    ``precompute_ref_log_probs=True`` and no reference, a frozen copy of the initial policy."""
    if trainer.ref_model is not None:
        return unwrap_parallel(trainer.ref_model)
    policy = unwrap_parallel(trainer.model)
    if is_peft(policy):
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


def is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def _fresh_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of ``model``'s weights in a new instance (a deep copy would keep TRL's patched forward)."""
    weight = next(model.parameters())
    copy_ = type(model)(copy.deepcopy(model.config)).to(device=weight.device, dtype=weight.dtype)
    copy_.load_state_dict(model.state_dict())
    return copy_.eval().requires_grad_(False)


def default_cadence(args: Any, max_steps: int) -> int:
    """Probe steps when ``every_n_steps`` is not given: the trainer's eval or save cadence when it gives
    at least four probes, else a tenth of the run.

    Example:
        >>> from types import SimpleNamespace
        >>> default_cadence(SimpleNamespace(eval_strategy="no", eval_steps=None, save_strategy="no",
        ...                                 save_steps=None), 120)
        12
    """
    max_steps = max(int(max_steps), 1)
    for strategy, steps in ((args.eval_strategy, args.eval_steps), (args.save_strategy, args.save_steps)):
        if str(getattr(strategy, "value", strategy)) == "steps" and steps:
            n = int(steps) if steps >= 1 else round(steps * max_steps)
            if 1 <= n <= max_steps // 4:
                return n
    return max(1, max_steps // 10)


def prompt_pools(trainer: Any) -> list[Any]:
    """The datasets the default sample draws from: the eval split when it has a ``prompt`` column and at
    least 4 unique prompts, else the eval split and the train split together."""
    train, evaluation = trainer.train_dataset, trainer.eval_dataset
    if not isinstance(evaluation, datasets.Dataset) or "prompt" not in evaluation.column_names:
        return [train]
    if count_unique(evaluation["prompt"], MIN_WATCHED_PROMPTS) >= MIN_WATCHED_PROMPTS:
        return [evaluation]
    return [evaluation, train]


def check_default_prompts(options: ProbeOptions, trainer: Any) -> None:
    """Without ``probe_prompts``, the data must offer at least 4 unique prompts to watch (refused at attach)."""
    if options.probe_prompts is not None:
        return
    pools = prompt_pools(trainer)
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


def watched_prompts(options: ProbeOptions, trainer: Any) -> list[Any]:
    """``probe_prompts``, or the default sample: ``n_probe_prompts`` prompts stratified by source."""
    if options.probe_prompts is not None:
        return list(options.probe_prompts)
    prompts: list[Any] = []
    sources: list[Any] = []
    column = options.source_column
    for ds in prompt_pools(trainer):
        prompts += list(ds["prompt"])
        sources += list(ds[column]) if column in ds.column_names else [None] * len(ds)
    return stratified_sample(prompts, sources, options.n_probe_prompts, options.seed)


def stratified_sample(prompts: list[Any], sources: list[Any], n: int, seed: int = 0) -> list[Any]:
    """Up to ``n`` distinct prompts, taken from each source in turn (every source watched, small ones whole)."""
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
