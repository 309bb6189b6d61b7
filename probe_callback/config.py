"""The callback's options, their defaults, and attach-time validation.

Example:
    >>> opts = ProbeOptions(probe_prompts=["Hi", "Tell me a joke"], every_n_steps=10)
    >>> opts.validate(num_layers=30)
    >>> opts.resolve_layers(30)
    [18]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

DEFAULT_DEPTH = 0.6


@dataclass
class ProbeOptions:
    """Every option of :class:`~probe_callback.ProbeCallback`; all have defaults.

    - ``probe_prompts``: the prompts to watch (text or chat messages). Default: a sample of
      ``n_probe_prompts`` eval (else train) prompts.
    - ``behaviours``: supervised :class:`~probe_callback.Behaviour` definitions.
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
    - ``judge``: optional ``judge(prompt, response) -> bool`` giving a ground-truth rate.
    - ``policy``: keyword arguments of :class:`~probe_callback.policy.RegressionPolicy`.
    - ``seed``: seeds prompt sampling, the projection and the null tests.
    """

    probe_prompts: Sequence[Any] | None = None
    behaviours: Sequence[Any] = ()
    every_n_steps: int | None = None
    probe_budget: float | None = 0.1
    pause_on_regression: bool = True
    output_dir: str | None = None
    layers: Sequence[int] | None = None
    projection_dim: int | str | None = "auto"
    id_column: str = "id"
    source_column: str = "source"
    n_probe_prompts: int = 64
    max_new_tokens: int = 48
    probe_batch_size: int = 32
    top_k: int = 50
    judge: Callable[[str, str], bool] | None = None
    policy: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def resolve_layers(self, num_layers: int) -> list[int]:
        """The probed layers; the default is the block at about 60% of the depth (paper: 20 of 32)."""
        if self.layers is None:
            return [max(1, min(num_layers - 1, round(DEFAULT_DEPTH * num_layers)))]
        return [int(x) for x in self.layers]

    def validate(self, num_layers: int) -> None:
        """Raise a ``ValueError`` naming what is wrong and how to fix it."""
        for layer in self.resolve_layers(num_layers):
            if not 1 <= layer < num_layers:
                raise ValueError(
                    f"layers contains {layer}, but the model has {num_layers} decoder layers: use HF "
                    f"hidden_states indices between 1 and {num_layers - 1} (default: about 60% depth)."
                )
        if self.layers is not None and len(set(self.layers)) != len(list(self.layers)):
            raise ValueError(f"layers {list(self.layers)} repeats a layer; list each layer once.")
        if self.every_n_steps is not None and (not isinstance(self.every_n_steps, int) or self.every_n_steps < 1):
            raise ValueError(
                f"every_n_steps={self.every_n_steps!r} must be a positive integer (or None for the default)."
            )
        if self.probe_budget is not None and not 0 < self.probe_budget <= 1:
            raise ValueError(
                f"probe_budget={self.probe_budget!r} must be a share of the training time in (0, 1], e.g. 0.1 "
                "(or None to probe at every default step)."
            )
        if self.probe_prompts is not None:
            prompts = list(self.probe_prompts)
            if not prompts:
                raise ValueError("probe_prompts is empty: pass at least 2 prompts, or None to sample the dataset's.")
            keys = [repr(p) for p in prompts]
            dupes = sorted({k for k in keys if keys.count(k) > 1})
            if dupes:
                raise ValueError(f"probe_prompts repeats {dupes[:3]}: each watched prompt must be unique.")
            if any(isinstance(p, str) and not p.strip() for p in prompts):
                raise ValueError("probe_prompts contains an empty prompt; remove it.")
        if self.n_probe_prompts < 2:
            raise ValueError("n_probe_prompts must be at least 2.")
        if self.max_new_tokens < 1 or self.probe_batch_size < 1 or self.top_k < 1:
            raise ValueError("max_new_tokens, probe_batch_size and top_k must be positive.")
        if self.judge is not None and not callable(self.judge):
            raise ValueError("judge must be a callable judge(prompt, response) -> bool.")
        names = [getattr(b, "name", None) for b in self.behaviours]
        if len(set(names)) != len(names):
            raise ValueError(f"behaviours have duplicate names {names}; give each Behaviour a unique name.")
