"""The callback's options, their defaults, and attach-time validation.

Every field is checked when a ``ProbeOptions`` is made (types and values, one option at a time);
``validate`` adds the checks that need the model. Errors name the option and the fix.

Example:
    >>> opts = ProbeOptions(probe_prompts=["Hi", "Tell me a joke", "What is 2+2?", "Name a colour"])
    >>> opts.validate(num_layers=30, hidden_size=576, context=8192)
    >>> opts.resolve_layers(30)
    [18]
"""

from __future__ import annotations

import numbers
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from .capture.blocks import check_layer_indices, default_layer_index
from .decide.policy import SETTINGS, setting_error
from .scoring.behaviours import Behaviour, check_text, check_unique_names

# Emergent discovery clusters the watched prompts: its smallest cluster has 4 of them.
MIN_WATCHED_PROMPTS = 4
EMERGENT_NAME = re.compile(r"emergent-\d+")


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _int_at_least(option: str, value: Any, low: int, why: str = "") -> None:
    if not _is_int(value):
        raise TypeError(f"{option}={value!r} must be an integer >= {low}{why}, got {type(value).__name__}.")
    if value < low:
        raise ValueError(f"{option}={value!r} must be an integer >= {low}{why}.")


def _check_prompt(i: int, prompt: Any) -> None:
    """A watched prompt: non-empty text, or chat messages ({"role": str, "content": str} dicts)."""
    where = f"probe_prompts[{i}]"
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError(f"{where} is an empty prompt; remove it.")
        check_text(where, prompt)
        return
    fix = 'give text, or chat messages like [{"role": "user", "content": "Hi"}]'
    if not isinstance(prompt, (list, tuple)) or not prompt:
        raise TypeError(f"{where} is {prompt!r}: {fix}.")
    for j, message in enumerate(prompt):
        ok = isinstance(message, dict) and all(isinstance(message.get(k), str) for k in ("role", "content"))
        if not ok:
            raise ValueError(
                f"{where}[{j}] is {message!r}: each chat message needs string 'role' and 'content'; {fix}."
            )
        check_text(f"{where}[{j}]", message["content"])


def _check_policy_value(where: str, key: str, value: Any) -> None:
    need = setting_error(key, value)
    if need:
        raise ValueError(f"policy{where}[{key!r}]={value!r} must be {need}.")


def _check_policy(policy: Any, behaviour_names: set[str]) -> None:
    """Keys, types and values of ``policy``; overrides must name a behaviour or an ``emergent-N`` cluster."""
    settings = list(SETTINGS)
    if not isinstance(policy, dict):
        raise TypeError(f"policy={policy!r} must be a dict of RegressionPolicy settings, e.g. {{'patience': 3}}.")
    unknown = sorted(set(policy) - {*settings, "overrides"})
    if unknown:
        raise ValueError(f"policy has unknown keys {unknown}; valid keys: {[*settings, 'overrides']}.")
    for key in set(policy) - {"overrides"}:
        _check_policy_value("", key, policy[key])
    overrides = policy.get("overrides", {})
    if not isinstance(overrides, dict):
        raise TypeError(f"policy['overrides'] must map a behaviour name to a dict of settings, got {overrides!r}.")
    for name, values in overrides.items():
        if name not in behaviour_names and not (isinstance(name, str) and EMERGENT_NAME.fullmatch(name)):
            raise ValueError(
                f"policy['overrides'] names {name!r}, which is no behaviour: use one of {sorted(behaviour_names)} "
                "or an emergent cluster's name (emergent-N)."
            )
        if not isinstance(values, dict) or set(values) - set(settings):
            raise ValueError(f"policy['overrides'][{name!r}]={values!r} must be a dict with keys among {settings}.")
        for key, value in values.items():
            _check_policy_value(f"['overrides'][{name!r}]", key, value)


def check_output_dir(path: Path) -> None:
    """Raise unless ``path`` is, or can be made as, a writable folder (``output_dir``'s check)."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is" if existing == path else f"is under {existing}, which is"
        raise ValueError(f"output_dir={str(path)!r} {where} an existing file: give a folder path.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"output_dir={str(path)!r} is not writable ({existing} denies writing): give a folder you can write to."
        )


@dataclass
class ProbeOptions:
    """Every option of :class:`~probe_callback.ProbeCallback`; all have defaults.

    - ``probe_prompts``: the prompts to watch (text or chat messages), at least 4. Default: a sample
      of ``n_probe_prompts`` eval prompts (train ones too when the eval split has fewer than 4 unique ones);
      refused at attach when the data hold fewer than 4 unique prompts.
    - ``behaviours``: a list of supervised :class:`~probe_callback.Behaviour` definitions.
    - ``every_n_steps``: probe cadence; every one is probed. Default: the trainer's eval cadence, else
      its save cadence, else a tenth of ``max_steps``, each probed only within ``probe_budget``.
    - ``probe_budget``: under the default cadence, the largest share of the training wall time the
      probes may take (a due probe waits until it fits); None probes every default step.
    - ``pause_on_regression``: save a checkpoint and stop when a behaviour regresses.
    - ``output_dir``: where the report, alerts and vector store go (default
      ``<args.output_dir>/probe_callback``).
    - ``layers``: HF ``hidden_states`` indices to probe (default: 60% of the depth).
    - ``projection_dim``: store vectors through a seeded random projection ("auto": only above 1024).
    - ``id_column`` / ``source_column``: dataset columns naming a row and its data source.
    - ``max_new_tokens``: length of greedy probe responses.
    - ``policy``: keyword arguments of :class:`~probe_callback.decide.policy.RegressionPolicy`.
    - ``seed``: seeds prompt sampling, the projection and the null tests.
    """

    probe_prompts: Sequence[Any] | None = None
    behaviours: Sequence[Behaviour] = ()
    every_n_steps: int | None = None
    probe_budget: float | None = 0.1
    pause_on_regression: bool = True
    output_dir: str | os.PathLike[str] | None = None
    layers: Sequence[int] | None = None
    projection_dim: int | str | None = "auto"
    id_column: str = "id"
    source_column: str = "source"
    n_probe_prompts: int = 64
    max_new_tokens: int = 48
    probe_batch_size: int = 32
    top_k: int = 50
    policy: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        """Check each option's type and value (``TypeError`` / ``ValueError`` naming the option)."""
        self._check_prompts()
        self._check_behaviours()
        if self.every_n_steps is not None:
            _int_at_least("every_n_steps", self.every_n_steps, 1)
        if self.probe_budget is not None:
            if not _is_number(self.probe_budget):
                raise TypeError(f"probe_budget={self.probe_budget!r} must be a number in (0, 1], e.g. 0.1, or None.")
            if not 0 < self.probe_budget <= 1:
                raise ValueError(
                    f"probe_budget={self.probe_budget!r} must be a share of the training time in (0, 1], e.g. 0.1 "
                    "(or None to probe at every default step)."
                )
        if not isinstance(self.pause_on_regression, bool):
            raise TypeError(f"pause_on_regression={self.pause_on_regression!r} must be True or False.")
        if self.output_dir is not None and (
            not isinstance(self.output_dir, (str, os.PathLike)) or not str(self.output_dir)
        ):
            raise TypeError(f"output_dir={self.output_dir!r} must be a folder path (str or Path), or None.")
        self._check_layers()
        if self.projection_dim not in ("auto", None):
            _int_at_least("projection_dim", self.projection_dim, 1)
        for option in ("id_column", "source_column"):
            value = getattr(self, option)
            if not isinstance(value, str) or not value:
                raise TypeError(f"{option}={value!r} must be the name of a dataset column.")
        _int_at_least(
            "n_probe_prompts", self.n_probe_prompts, MIN_WATCHED_PROMPTS, " (emergent discovery clusters them)"
        )
        for option in ("max_new_tokens", "probe_batch_size", "top_k"):
            _int_at_least(option, getattr(self, option), 1)
        _int_at_least("seed", self.seed, 0)
        _check_policy(self.policy, {b.name for b in self.behaviours})

    def _check_prompts(self) -> None:
        if self.probe_prompts is None:
            return
        if not isinstance(self.probe_prompts, (list, tuple)):
            raise TypeError(
                f"probe_prompts must be a list of prompts (text or chat messages), got {self.probe_prompts!r:.60}: "
                "put the prompts in a list, or pass None to sample the dataset's."
            )
        if not self.probe_prompts:
            raise ValueError(
                f"probe_prompts is empty: pass at least {MIN_WATCHED_PROMPTS} prompts, or None to sample the dataset's."
            )
        for i, prompt in enumerate(self.probe_prompts):
            _check_prompt(i, prompt)
        keys = [repr(p) for p in self.probe_prompts]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ValueError(f"probe_prompts repeats {dupes[:3]}: each watched prompt must be unique.")
        if len(self.probe_prompts) < MIN_WATCHED_PROMPTS:
            raise ValueError(
                f"probe_prompts has {len(self.probe_prompts)} prompt(s): watch at least {MIN_WATCHED_PROMPTS} "
                "(emergent discovery clusters them; 50+ work best), or pass None to sample the dataset's."
            )

    def _check_behaviours(self) -> None:
        if not isinstance(self.behaviours, (list, tuple)):
            wrap = " (wrap a single one: behaviours=[b])" if isinstance(self.behaviours, Behaviour) else ""
            raise TypeError(
                f"behaviours must be a list of probe_callback.Behaviour, got {type(self.behaviours).__name__}{wrap}."
            )
        for b in self.behaviours:
            if not isinstance(b, Behaviour):
                raise TypeError(f"behaviours must hold probe_callback.Behaviour objects, got {type(b).__name__}.")
        check_unique_names(self.behaviours)

    def _check_layers(self) -> None:
        if self.layers is None:
            return
        if not isinstance(self.layers, (list, tuple)) or not all(_is_int(x) for x in self.layers):
            raise TypeError(f"layers={self.layers!r} must be a list of integer layer indices, e.g. [12], or None.")
        if not self.layers:
            raise ValueError("layers=[] is empty: list at least one layer, or pass None for the default (60% depth).")
        check_layer_indices(self.layers)

    def resolve_layers(self, num_layers: int) -> list[int]:
        """The probed layers; the default is the block at about 60% of the depth (paper: 20 of 32)."""
        if self.layers is None:
            return [default_layer_index(num_layers)]
        return [int(x) for x in self.layers]

    def validate(self, num_layers: int, hidden_size: int | None = None, context: int | None = None) -> None:
        """The checks that need the model: layer range, ``projection_dim`` <= hidden size, and
        ``max_new_tokens`` below the model's context (``max_position_embeddings``)."""
        check_layer_indices(self.resolve_layers(num_layers), num_layers)
        if hidden_size is not None and _is_int(self.projection_dim) and self.projection_dim > hidden_size:
            raise ValueError(
                f"projection_dim={self.projection_dim} is larger than the model's hidden size {hidden_size}: "
                f"use at most {hidden_size}, or None to store vectors unprojected."
            )
        if context is not None and self.max_new_tokens >= context:
            raise ValueError(
                f"max_new_tokens={self.max_new_tokens} leaves no room for a prompt in the model's context of "
                f"{context} tokens: use fewer (default 48)."
            )
