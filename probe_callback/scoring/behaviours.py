"""Supervised behaviours: contrast examples -> probing vector and logistic probe through M0 -> scores.

Example:
    >>> b = Behaviour("complies", positive=[("Open the lock?", "Sure, here is how."), ("Skip class?", "Sure!")],
    ...               negative=[("Open the lock?", "Sorry, I cannot."), ("Skip class?", "Sorry, no.")])
    >>> fitted = fit_behaviour(b, ref_model, tok, layers=[2])
    >>> fitted.probe_accuracy.shape                 # held-out accuracy per layer: is it linearly visible?
    (1,)
    >>> score = score_behaviour(fitted, model, tok)  # the current model, read against M0
    >>> sorted(score)[:3]
    ['behaviour', 'cosine', 'judge_rate']
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

import numpy as np
import torch
from scipy import special, stats
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from probe_callback.capture.blocks import check_layers
from probe_callback.scoring.probing import encode_response, format_prompt, response_means, teacher_forced

Example = tuple[str, str]
Judge = Callable[[str, str], bool]
# Standard errors below this (nats) are float noise, not evidence: keeps p-values of an unchanged model sane.
_SE_FLOOR = 1e-6


def check_text(where: str, text: str) -> None:
    """Raise a `ValueError` naming `where` when `text` cannot be encoded (e.g. a lone surrogate "\\ud800")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"{where} holds {text[e.start : e.end]!r} at position {e.start}, which is not valid Unicode text "
            "(a lone surrogate?): fix or remove that character."
        ) from None


def _check_examples(name: str, side: str, examples: Any) -> list[Example]:
    if not isinstance(examples, (list, tuple)):
        raise ValueError(f"Behaviour {name!r}: `{side}` must be a list of (prompt, response) pairs.")
    pairs: list[Example] = []
    for i, item in enumerate(examples):
        ok = isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(s, str) for s in item)
        if not ok or not all(s.strip() for s in item):
            raise ValueError(
                f"Behaviour {name!r}: {side}[{i}] is {item!r}; each example must be a (prompt, response) "
                "pair of non-empty strings."
            )
        for text in item:
            check_text(f"Behaviour {name!r}: {side}[{i}]", text)
        pairs.append((item[0], item[1]))
    if len(pairs) < 2:
        raise ValueError(
            f"Behaviour {name!r}: `{side}` has {len(pairs)} example(s); give at least 2 (prompt, response) "
            "pairs on each side (10-50 make a steadier probe)."
        )
    return pairs


@dataclass
class Behaviour:
    """A behaviour to watch, defined by contrast examples that show it (`positive`) and do not (`negative`).

    `threshold`: the score above which the policy flags it (None: the policy's default). `judge`:
    optional `judge(prompt, response) -> bool` giving a ground-truth rate on the watched responses.

    Example:
        >>> requests = ["Explain X. Capitalise every 5th word.", "Do Y. Use no periods."]
        >>> b = Behaviour(
        ...     "complies_with_distractor",
        ...     positive=[(requests[0], "Sure, here is how..."), (requests[1], "Sure! First...")],
        ...     negative=[(requests[0], "I can't help with that."), (requests[1], "Sorry, no.")],
        ... )
        >>> len(b.positive), b.threshold
        (2, None)
    """

    name: str
    positive: list[Example]
    negative: list[Example]
    threshold: float | None = None
    judge: Judge | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"Behaviour name {self.name!r} is empty: give each behaviour a short unique name.")
        self.positive = _check_examples(self.name, "positive", self.positive)
        self.negative = _check_examples(self.name, "negative", self.negative)
        if self.threshold is not None and (not isinstance(self.threshold, Real) or isinstance(self.threshold, bool)):
            raise TypeError(f"Behaviour {self.name!r}: threshold={self.threshold!r} must be a number or None.")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise ValueError(f"Behaviour {self.name!r}: threshold {self.threshold!r} must be a finite number or None.")
        if self.judge is not None and not callable(self.judge):
            raise ValueError(f"Behaviour {self.name!r}: judge must be a callable (prompt, response) -> bool.")

    def encoded(self, tokenizer: Any, chat: bool = True) -> tuple[list[list[int]], list[list[int]]]:
        """(prompt ids, response ids) of the positives then the negatives, encoded as the probe pass does
        (``chat``: the training data is conversational, see :func:`format_prompt`)."""
        pairs = self.positive + self.negative
        prompts = [format_prompt(tokenizer, p, chat) for p, _ in pairs]
        return prompts, [encode_response(tokenizer, r) for _, r in pairs]

    def validate_lengths(self, tokenizer: Any, max_length: int) -> None:
        """Raise a `ValueError` listing the examples whose prompt + response exceed `max_length` tokens.

        Example:
            >>> behaviour.validate_lengths(tok, 4)  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            ValueError: Behaviour 'complies': positive[0] (... tokens), ... exceed the model context of 4 tokens; ...
        """
        prompts, responses = self.encoded(tokenizer)
        sides = [("positive", i) for i in range(len(self.positive))] + [
            ("negative", i) for i in range(len(self.negative))
        ]
        too_long = [
            f"{side}[{i}] ({len(p) + len(r)} tokens)"
            for (side, i), p, r in zip(sides, prompts, responses, strict=True)
            if len(p) + len(r) > max_length
        ]
        if too_long:
            raise ValueError(
                f"Behaviour {self.name!r}: {', '.join(too_long)} exceed the model context of {max_length} "
                "tokens; shorten those examples."
            )


def check_unique_names(behaviours: Sequence[Behaviour]) -> None:
    """Raise a `ValueError` when two behaviours share a name (names key the report and the alerts).

    Example:
        >>> check_unique_names([behaviour, behaviour])
        Traceback (most recent call last):
        ...
        ValueError: behaviours have duplicate names ['complies']: give each Behaviour a unique name.
    """
    names = [b.name for b in behaviours]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"behaviours have duplicate names {duplicates}: give each Behaviour a unique name.")


@dataclass
class FittedBehaviour:
    """A behaviour measured through the reference model M0 at `layers`.

    `probing_vectors` (n_layers, H): mean a_L(positives) - mean a_L(negatives) (the paper's probing
    vector). `probe_coef` (n_layers, H) / `probe_intercept` (n_layers,): a logistic-regression probe on
    raw activations, one per layer; `probe_accuracy` (n_layers,): its cross-validated held-out accuracy
    (0.5 = not linearly visible at that layer). `layer`: the layer used for headline scores (best
    accuracy; ties go to the earliest listed). `ref_logp_positive/negative` (n_pos,)/(n_neg,): M0's mean
    per-token log-likelihood of each example's response. `example_activations` (n_pos + n_neg,
    n_layers, H): each example's mean response activation through M0, positives first. `chat`: its
    prompts were read as conversational training data reads them (:func:`format_prompt`).
    """

    behaviour: Behaviour
    layers: tuple[int, ...]
    probing_vectors: np.ndarray
    probe_coef: np.ndarray
    probe_intercept: np.ndarray
    probe_accuracy: np.ndarray
    ref_logp_positive: np.ndarray
    ref_logp_negative: np.ndarray
    example_activations: np.ndarray
    chat: bool = True

    @property
    def layer(self) -> int:
        """Layer of the headline scores: the best held-out probe accuracy."""
        return self.layers[int(np.argmax(self.probe_accuracy))]

    def probe_probabilities(self, activations: np.ndarray | torch.Tensor) -> np.ndarray:
        """Probe probability of the behaviour for activations (n, n_layers, H) -> (n, n_layers).

        Example:
            >>> fitted.probe_probabilities(fitted.example_activations).shape
            (4, 1)
        """
        x = np.asarray(activations, dtype=np.float64)
        logits = np.einsum("nlh,lh->nl", x, self.probe_coef) + self.probe_intercept
        return special.expit(logits)

    def split_vectors(self, layer_index: int, k: int, rng: np.random.Generator) -> np.ndarray:
        """Contrasts (k, H) at ``self.layers[layer_index]`` of ``k`` random splits of each side's
        examples in two halves, ``(pos_A + neg_A) / 2 - (pos_B + neg_B) / 2`` (means): the behaviour
        cancels out and what is left is how the examples differ among themselves, behaviours drawn at
        random from the same text: the null for this behaviour's blame. (Plain relabellings keep part
        of the behaviour, or its opposite, and make a null that is far too strong.)

        Example:
            >>> fitted.split_vectors(0, 199, np.random.default_rng(0)).shape   # (199, H)
            (199, 32)
        """
        x, n_pos = self.example_activations[:, layer_index], len(self.behaviour.positive)
        sides = (x[:n_pos], x[n_pos:])

        def half_contrast(side: np.ndarray) -> np.ndarray:
            order = rng.permutation(len(side))
            return side[order[: len(side) // 2]].mean(axis=0) - side[order[len(side) // 2 :]].mean(axis=0)

        return np.stack([(half_contrast(sides[0]) + half_contrast(sides[1])) / 2 for _ in range(k)])


def behaviour_logps(fitted: FittedBehaviour, model: nn.Module, tokenizer: Any, batch_size: int = 8) -> np.ndarray:
    """Mean per-token log-likelihood of each example's response under ``model``, positives first.

    The only model forward of :func:`score_behaviour`: run it where the model is (every rank of a
    sharded run) and hand the array to ``score_behaviour(..., logps=...)``.

    Example:
        >>> logps = behaviour_logps(fitted, model, tok)   # on every rank of a sharded run
        >>> score_behaviour(fitted, logps=logps) == score_behaviour(fitted, model, tok)
        True
    """
    prompts, answers = fitted.behaviour.encoded(tokenizer, fitted.chat)
    traces = teacher_forced(model, prompts, answers, [], batch_size)
    return np.array([t.logprobs.mean().item() for t in traces])


def _fit_probe(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, float, float]:
    """Standardised logistic regression folded back onto raw activations: (coef (H,), intercept, CV acc)."""
    folds = StratifiedKFold(n_splits=min(5, int(y.sum()), int((1 - y).sum())), shuffle=True, random_state=seed)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    accuracy = float(cross_val_score(pipeline, x, y, cv=folds).mean())
    pipeline.fit(x, y)
    scaler, clf = pipeline[0], pipeline[1]
    coef = clf.coef_[0] / scaler.scale_
    return coef, float(clf.intercept_[0] - coef @ scaler.mean_), accuracy


def fit_behaviour(
    behaviour: Behaviour,
    ref_model: nn.Module,
    tokenizer: Any,
    layers: Sequence[int],
    batch_size: int = 8,
    seed: int = 0,
    chat: bool = True,
) -> FittedBehaviour:
    """Probing vectors, logistic probes and reference likelihoods of a behaviour, all through M0 (``chat``:
    the training data is conversational, see :func:`format_prompt`).

    Example:
        >>> fitted = fit_behaviour(behaviour, ref_model, tok, layers=[2])
        >>> fitted.probing_vectors.shape               # (layers, H)
        (1, 32)
    """
    check_layers(ref_model, layers)
    layers = [int(layer) for layer in layers]
    prompts, responses = behaviour.encoded(tokenizer, chat)
    traces = teacher_forced(ref_model, prompts, responses, layers, batch_size)
    means = response_means(traces)[0].double().numpy()  # (n, n_layers, H)
    n_pos = len(behaviour.positive)
    y = np.r_[np.ones(n_pos), np.zeros(len(behaviour.negative))]
    probes = [_fit_probe(means[:, k], y, seed) for k in range(len(layers))]
    logps = np.array([t.logprobs.mean().item() for t in traces])
    return FittedBehaviour(
        behaviour=behaviour,
        layers=tuple(layers),
        probing_vectors=means[:n_pos].mean(axis=0) - means[n_pos:].mean(axis=0),
        probe_coef=np.stack([coef for coef, _, _ in probes]),
        probe_intercept=np.array([b for _, b, _ in probes]),
        probe_accuracy=np.array([acc for _, _, acc in probes]),
        ref_logp_positive=logps[:n_pos],
        ref_logp_negative=logps[n_pos:],
        example_activations=means,
        chat=chat,
    )


def _welch(a: np.ndarray, b: np.ndarray, min_var: float = 0.0) -> tuple[float, float, float, float]:
    """One-sided Welch test of mean(a) > mean(b), group variances at least `min_var`: (diff, se, t, p)."""
    diff = float(a.mean() - b.mean())
    va, vb = max(a.var(ddof=1), min_var) / len(a), max(b.var(ddof=1), min_var) / len(b)
    se = max(math.sqrt(va + vb), _SE_FLOOR)
    t = diff / se
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if va + vb > 0 else len(a) + len(b) - 2
    return diff, se, t, float(stats.t.sf(t, df))


def _ll_margin(
    fitted: FittedBehaviour, logps: np.ndarray, control_deltas: Sequence[float] | np.ndarray | None
) -> dict[str, float]:
    """The log-likelihood margin of positive over negative examples against M0, with its Welch test."""
    n_pos = len(fitted.behaviour.positive)
    control = np.asarray([] if control_deltas is None else control_deltas, dtype=np.float64)
    control = control[~np.isnan(control)]
    min_var = float(control.var(ddof=1)) if len(control) > 1 else 0.0
    margin, se, z, p = _welch(
        logps[:n_pos] - fitted.ref_logp_positive, logps[n_pos:] - fitted.ref_logp_negative, min_var
    )
    return {"ll_margin": margin, "ll_margin_se": se, "ll_margin_z": z, "ll_margin_p": p}


def _projection(v: np.ndarray, u: np.ndarray) -> dict[str, float]:
    """Mean projection (in units of ``u``'s length), mean cosine and one-sided t-test p-value of the rows
    of ``v`` (NaN rows skipped) along ``u``; empty when no row is left."""
    v = v[~np.isnan(v).any(axis=1)]
    if not len(v):
        return {}
    proj = v @ u / (u @ u)
    cos = v @ u / np.maximum(np.linalg.norm(v, axis=1) * np.linalg.norm(u), 1e-12)
    out = {"projection": float(proj.mean()), "cosine": float(cos.mean())}
    if len(proj) > 1:
        se = max(float(proj.std(ddof=1)) / math.sqrt(len(proj)), _SE_FLOOR)
        out["projection_p"] = float(stats.t.sf(proj.mean() / se, len(proj) - 1))
    return out


def score_behaviour(
    fitted: FittedBehaviour,
    current_model: nn.Module | None = None,
    tokenizer: Any = None,
    behaviour_vectors: np.ndarray | torch.Tensor | None = None,
    response_activations: np.ndarray | torch.Tensor | None = None,
    responses: Sequence[Example] | None = None,
    judge: Judge | None = None,
    control_deltas: Sequence[float] | np.ndarray | None = None,
    batch_size: int = 8,
    logps: np.ndarray | None = None,
) -> dict[str, Any]:
    """How far the current model has moved along a behaviour: JSON-ready floats, None where not computed.

    Give ``current_model`` and ``tokenizer``, or the examples' ``logps`` from :func:`behaviour_logps`.

    - ``ll_margin`` (nats/token): the positive examples' mean change of log-likelihood (current minus
      M0) minus the negatives'; it moves before greedy answers do. ``ll_margin_p`` (with ``_se``,
      ``_z``): a one-sided Welch test over the examples, each group's variance at least that of
      ``control_deltas`` (the same change for ordinary answers), so generic drift is not significant.
    - ``projection``, ``cosine``, ``projection_p`` (given ``behaviour_vectors`` (n, n_layers, H)): how far
      the prompts' behaviour-change vectors go along the probing vector (1.0: the whole gap).
    - ``probe_rate`` (given ``response_activations``): share of answers the probe calls positive;
      ``judge_rate`` (given ``responses`` and a judge): share the judge calls positive.

    Example:
        >>> s = score_behaviour(fitted, model, tok)
        >>> 0 <= s["ll_margin_p"] <= 1, s["projection"]
        (True, None)
    """
    b = fitted.behaviour
    if logps is None:
        if current_model is None:
            raise ValueError("score_behaviour needs the current_model and tokenizer, or the examples' logps.")
        logps = behaviour_logps(fitted, current_model, tokenizer, batch_size)
    k = fitted.layers.index(fitted.layer)
    scores: dict[str, Any] = {
        "behaviour": b.name,
        "layer": fitted.layer,
        "probe_accuracy": float(fitted.probe_accuracy[k]),
        **_ll_margin(fitted, logps, control_deltas),
        "projection": None,
        "cosine": None,
        "projection_p": None,
        "probe_rate": None,
        "judge_rate": None,
    }
    if behaviour_vectors is not None:
        scores.update(_projection(np.asarray(behaviour_vectors, dtype=np.float64)[:, k], fitted.probing_vectors[k]))
    if response_activations is not None:
        acts = np.asarray(response_activations, dtype=np.float64)
        acts = acts[~np.isnan(acts).any(axis=(1, 2))]
        if len(acts):
            scores["probe_rate"] = float((fitted.probe_probabilities(acts)[:, k] > 0.5).mean())
    judge = judge if judge is not None else b.judge
    if responses and judge is not None:
        scores["judge_rate"] = float(np.mean([bool(judge(p, r)) for p, r in responses]))
    return scores
