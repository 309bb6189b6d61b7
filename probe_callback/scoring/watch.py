"""The checkpoint probe pass: what the watched prompts get from the current model, read through M0.

At train begin :class:`Watch` asks the reference model M0 for its greedy answer ``r0`` to each
watched prompt and keeps its teacher-forced activations. At each checkpoint :meth:`Watch.probe`
asks the current model for ``r_t`` and measures it through M0 (per-token hidden states), plus the
per-token log-prob rise of ``r_t`` (current model minus M0) that names what the model newly wants.

Example:
    >>> from contextlib import nullcontext
    >>> current, reference = (lambda: nullcontext(model)), (lambda: nullcontext(ref_model))
    >>> watch = Watch.build(["Say hi", "What is 2+2?"], tok, reference, layers=[2], max_new_tokens=4)
    >>> probe = watch.probe(step=20, current=current, reference=reference)
    >>> probe.change.shape        # (n_prompts, n_layers, H): the paper's behaviour-change vectors
    (2, 1, 32)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from .behaviours import FittedBehaviour, behaviour_logps
from .probing import ResponseTrace, format_prompt, greedy_responses, greedy_traced, teacher_forced

CONTROL_PROMPTS = 16
# the light checks' views of M0's answers (:class:`~probe_callback.scoring.probing.ResponseTrace`): each token's
# best log-prob over an answer, as its first token, right after its last and in place of its last
VIEWS = ("best", "opening", "closing", "final")

# A context manager factory yielding a model ready for forwards: M0 (PEFT: adapters off), or the
# current model (under ZeRO-3 with its parameters gathered).
Reference = Callable[[], contextlib.AbstractContextManager[nn.Module]]


@dataclass
class Probe:
    """One checkpoint's measurements for n watched prompts.

    ``cur_tokens[i]``: (T_i, H) M0 hidden states of r_t's tokens at the primary layer;
    ``novelty[i]``: (T_i,) log-prob rise of those tokens; ``tokens[i]``: their text;
    ``change``: (n, n_layers, H) the paper's ``a_L(p, r_t; M0) - a_L(p, r0; M0)`` (NaN for empty
    answers); ``response_means``: (n, n_layers, H) ``a_L(p, r_t; M0)``; ``prompt_current`` /
    ``prompt_reference``: (n, n_layers, H) mean prompt-token activations under the current model and
    M0, the generation-free drift signal (NaN rows for empty answers); ``control``: (n,) mean
    per-token log-prob change of M0's own answers r0 (the run's generic likelihood drift), NaN outside
    the ``CONTROL_PROMPTS`` sampled; ``likelihoods``: per supervised behaviour, its examples' mean
    per-token log-likelihood under the current model (:func:`~probe_callback.scoring.behaviours.behaviour_logps`).
    """

    step: int
    responses: list[str]
    cur_tokens: list[np.ndarray]
    novelty: list[np.ndarray]
    tokens: list[list[str]]
    change: np.ndarray
    response_means: np.ndarray
    prompt_current: np.ndarray
    prompt_reference: np.ndarray
    valid: np.ndarray
    control: np.ndarray
    likelihoods: dict[str, np.ndarray] = field(default_factory=dict)


class Watch:
    """The watched prompts, M0's answers to them and M0's view of those answers."""

    def __init__(
        self,
        prompts: Sequence[Any],
        tokenizer: Any,
        layers: Sequence[int],
        r0: list[list[int]],
        base: list[ResponseTrace],
        max_new_tokens: int = 48,
        batch_size: int = 8,
        complete: list[bool] | None = None,
        chat: bool = True,
    ) -> None:
        self.prompts, self.tokenizer, self.layers = list(prompts), tokenizer, list(layers)
        self.chat = chat  # conversational training data: a text prompt is a user message (:func:`format_prompt`)
        self.prompt_ids = [format_prompt(tokenizer, p, chat) for p in self.prompts]
        self.r0, self.max_new_tokens, self.batch_size = r0, max_new_tokens, batch_size
        # whether each answer is whole: M0 stopped before max_new_tokens, or it was given whole (a rejected answer)
        self.complete = list(complete) if complete is not None else [0 < len(r) < max_new_tokens for r in r0]
        # M0's log-prob of every token over each of its answers, by view (:data:`VIEWS`), (n, V): the light checks
        self.reference_views = {view: _vocab_matrix(base, view) for view in VIEWS}
        self.base = [replace(t, best=None, opening=None, closing=None, final=None) for t in base]
        self.grown = 0  # prompts added by :meth:`grow` (the last ones)

    @classmethod
    def build(
        cls,
        prompts: Sequence[Any],
        tokenizer: Any,
        reference: Reference,
        layers: Sequence[int],
        max_new_tokens: int = 48,
        batch_size: int = 8,
        r0: Sequence[list[int] | None] | None = None,
        complete: list[bool] | None = None,
        chat: bool = True,
    ) -> Watch:
        """Generate M0's answers (those of ``r0`` that are None; all without it) and read them through M0;
        ``complete``: which answers are whole (saved on resume; default: those shorter than ``max_new_tokens``);
        ``chat``: the training data is conversational (:func:`~probe_callback.scoring.probing.format_prompt`)."""
        ids = [format_prompt(tokenizer, p, chat) for p in prompts]
        given = list(r0) if r0 is not None else [None] * len(ids)
        todo = [i for i, a in enumerate(given) if a is None]
        with reference() as ref:
            generated = iter(
                greedy_responses(ref, tokenizer, [ids[i] for i in todo], max_new_tokens, batch_size) if todo else []
            )
            answers = [a if a is not None else next(generated) for a in given]
            base = teacher_forced(ref, ids, answers, layers, batch_size, vocab_best=True)
        return cls(prompts, tokenizer, layers, answers, base, max_new_tokens, batch_size, complete, chat)

    def grow(
        self,
        prompts: Sequence[Any],
        reference: Reference,
        answers: Sequence[list[int] | None] = (),
        whole: Sequence[bool] = (),
    ) -> None:
        """Watch ``prompts`` too from now on: M0's answers to them, or the given ``answers`` (e.g. rows' rejected
        answers; None: M0's), read through M0 (every rank calls it); ``whole``: which given answers are whole
        (default: all).

        Example:
            >>> from contextlib import nullcontext
            >>> watch = Watch.build(["Say hi", "Hello"], tok, lambda: nullcontext(ref_model), [2], max_new_tokens=4)
            >>> grown = ["Count to three", "Name a colour", "Spell it"]
            >>> watch.grow(grown, lambda: nullcontext(ref_model), [None, [7, 8, 9, 10], [7, 8]], [False, True, False])
            >>> len(watch.prompts), len(watch.r0[-2]), len(watch.reference_views["final"]), watch.grown
            (5, 4, 5, 3)
            >>> watch.complete[-2:]
            [True, False]
        """
        given = list(answers) or [None] * len(prompts)
        whole = list(whole) or [True] * len(given)
        more = Watch.build(
            prompts, self.tokenizer, reference, self.layers, self.max_new_tokens, self.batch_size, given, chat=self.chat
        )
        self.prompts += more.prompts
        self.prompt_ids += more.prompt_ids
        self.r0 += more.r0
        self.complete += [w if a is not None else ended for a, w, ended in zip(given, whole, more.complete)]
        self.base += more.base
        for view, matrix in more.reference_views.items():
            self.reference_views[view] = np.concatenate([self.reference_views[view], matrix])
        self.grown += len(more.prompts)

    @property
    def texts(self) -> list[str]:
        return [p if isinstance(p, str) else str(p[-1].get("content", "")) for p in self.prompts]

    def answers(self, ids: list[list[int]]) -> list[str]:
        return [self.tokenizer.decode(r, skip_special_tokens=True) for r in ids]

    def base_tokens(self) -> list[np.ndarray]:
        """M0's per-token states of r0 at the primary layer (a one-token zero for an empty r0)."""
        return [_tokens_or_zero(t) for t in self.base]

    def probe(
        self, step: int, current: Reference, reference: Reference, behaviours: Sequence[FittedBehaviour] = ()
    ) -> Probe:
        """Greedy answers of the current model and their measurements through M0 (see :class:`Probe`).

        Three passes: the generation (which also gives r_t's log-probs and prompt activations under
        the current model), r_t teacher-forced through M0, and r0 through the current model for
        ``CONTROL_PROMPTS`` prompts spread over the list (the control deltas only need the spread of
        the run's drift); plus the ``behaviours``' examples through the current model. Every model
        forward of a checkpoint is here, so a sharded run calls this on every rank.
        """
        ids, layers, bs = self.prompt_ids, self.layers, self.batch_size
        picks = np.unique(np.linspace(0, len(ids) - 1, CONTROL_PROMPTS).round().astype(int))
        with current() as model:
            rt, own = greedy_traced(model, self.tokenizer, ids, layers, self.max_new_tokens, bs)
            r0_now = teacher_forced(model, [ids[i] for i in picks], [self.r0[i] for i in picks], [], bs)
            likelihoods = {f.behaviour.name: behaviour_logps(f, model, self.tokenizer, bs) for f in behaviours}
        with reference() as ref:
            cur = teacher_forced(ref, ids, rt, layers, bs)
        means = torch.stack([t.mean() for t in cur]).numpy()
        base_means = torch.stack([t.mean() for t in self.base]).numpy()
        control = np.full(len(ids), np.nan)
        for i, now in zip(picks, r0_now):
            control[i] = (now.logprobs - self.base[i].logprobs).mean().item() if now.length else np.nan
        return Probe(
            step=step,
            responses=self.answers(rt),
            cur_tokens=[_tokens_or_zero(t) for t in cur],
            novelty=[(o.logprobs - c.logprobs).numpy() if c.length else np.zeros(1) for o, c in zip(own, cur)],
            tokens=[[self.tokenizer.decode([x]) for x in r] or [""] for r in rt],
            change=means - base_means,
            response_means=means,
            prompt_current=torch.stack([o.prompt_mean for o in own]).numpy(),
            prompt_reference=torch.stack([c.prompt_mean for c in cur]).numpy(),
            valid=np.array([t.length > 0 for t in cur]) & np.array([t.length > 0 for t in self.base]),
            control=control,
            likelihoods=likelihoods,
        )

    @property
    def answered(self) -> np.ndarray:
        """(n,) whether M0 gave each prompt a non-empty answer (the light checks read only those)."""
        return np.array([len(r) > 0 for r in self.r0])

    @property
    def ended(self) -> np.ndarray:
        """(n,) whether each watched answer is whole (M0 stopped before ``max_new_tokens``, or it was given
        whole): the position right after its last token is where a line appended to answers would begin."""
        return np.array(self.complete, dtype=bool) & self.answered

    def word_logprobs(self, token_ids: Sequence[int], current: Reference) -> TokenReads:
        """The light check: M0's answers r0 teacher-forced through the current model, no generation: how
        likely each of ``token_ids`` is now and under M0 (read at set-up). A sharded run calls this on
        every rank.

        Example:
            >>> from contextlib import nullcontext
            >>> watch = Watch.build(["Say hi", "Hello"], tok, lambda: nullcontext(ref_model), [2], max_new_tokens=4)
            >>> reads = watch.word_logprobs([42, 7], lambda: nullcontext(model))
            >>> reads.now.shape == reads.opening_before.shape == (2, 2)   # (now - before): how much likelier
            True
        """
        with current() as model:
            traces = teacher_forced(model, self.prompt_ids, self.r0, [], self.batch_size, vocab_best=True)
        return TokenReads(
            *(
                m[:, token_ids].astype(np.float32)
                for view in VIEWS
                for m in (_vocab_matrix(traces, view), self.reference_views[view])
            )
        )


@dataclass
class TokenReads:
    """What a light check read of K tokens on the n watched prompts, (n, K) each, -inf where M0's answer
    is empty: ``now``/``before``: each token's best log-prob over M0's answer through the current model
    and through M0; ``opening_now``/``opening_before``: its log-prob as the answer's first token;
    ``closing_now``/``closing_before``: right after the answer's last token; ``final_now``/``final_before``: in
    place of the answer's last token."""

    now: np.ndarray
    before: np.ndarray
    opening_now: np.ndarray
    opening_before: np.ndarray
    closing_now: np.ndarray
    closing_before: np.ndarray
    final_now: np.ndarray
    final_before: np.ndarray


def _vocab_matrix(traces: Sequence[ResponseTrace], kind: str) -> np.ndarray:
    """(n, V) float16 of the traces' view ``kind`` (one of :data:`VIEWS`; -inf rows for empty responses)."""
    rows = [getattr(t, kind) for t in traces]
    width = next((r.shape[0] for r in rows if r is not None), 0)
    out = np.full((len(traces), width), -np.inf, dtype=np.float16)
    for i, r in enumerate(rows):
        if r is not None:
            out[i] = r.numpy()
    return out


def _tokens_or_zero(trace: ResponseTrace) -> np.ndarray:
    h = trace.hidden[0].numpy()
    return h if len(h) else np.zeros((1, trace.hidden.shape[-1]), dtype=np.float32)
