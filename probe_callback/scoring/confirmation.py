"""Does a learning pattern reach prompts outside its rows? The tests a probe and a light check make.

At a probe, :func:`confirm` counts the watched answers that *gained* a pattern's words (risen by a nat
or more, absent from M0's answer). Between probes, a light check reads M0's answers through the
current model (no generation) and :func:`word_rise` asks whether the pattern's tokens became likelier
there than the run's other learned tokens (:func:`learned_tokens`) did where they are foreign
(:func:`learned_by`).

Example:
    >>> import numpy as np
    >>> c = confirm(["sure"], [{"sure"}, {"sure"}, {"the"}], np.ones(3, bool), [set(), set(), {"the"}])
    >>> c.count, c.changed
    (2, 3)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import binom, norm

from .learning import MIN_PEAK_RISE, latest_records, normalise

# Control tokens needed to rank a rise among them on the top quarter of prompts. With fewer, alike tokens top
# them all too often (1 in C + 1) for random draws of them to say more: the rise must then outrank them prompt
# by prompt, where many prompts can say what few controls cannot (:func:`_rank_mean_p`).
MIN_RANKED = 16
LINE_WORDS = 3  # a line appended to answers: the same first words added where the rejected answers end


def learned_tokens(records: dict[str, np.ndarray], exclude: set[int], most: int = 256) -> list[int]:
    """The tokens the run's rows learn most often (peaks of at least ``MIN_PEAK_RISE``, latest record of
    each row), ``exclude`` left out: the run's ordinary learning, a control for a pattern's tokens."""
    rec = latest_records(records)
    ids = np.asarray(rec["peak_ids"])[np.asarray(rec["peak_rises"], dtype=np.float64) >= MIN_PEAK_RISE]
    values, counts = np.unique(ids[ids >= 0], return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return [int(i) for i in values[order] if int(i) not in exclude][:most]


def learned_by(records: dict[str, np.ndarray], tokens: list[int], sources: np.ndarray) -> list[set[str]]:
    """Per token: the sources of the rows whose learning peaked on it (:func:`learner_rows`); rows with no
    source count as ``""``.

    Example:
        >>> import numpy as np
        >>> rec = {"row": np.array([0, 1]), "peak_ids": np.array([[5, 6], [5, -1]]),
        ...        "peak_rises": np.array([[2.0, 0.5], [3.0, 0.0]])}
        >>> [sorted(s) for s in learned_by(rec, [5, 6], np.array(["a", "b"], dtype=object))]
        [['a', 'b'], []]
    """

    def name(row: int) -> str:
        source = sources[row] if row < len(sources) else None
        return "" if source is None else str(source)

    return [{name(r) for r in rows.tolist()} for rows in learner_rows(records, tokens)]


def learner_rows(records: dict[str, np.ndarray], tokens: list[int]) -> list[np.ndarray]:
    """Per token: the rows whose learning peaked on it (at least ``MIN_PEAK_RISE``, any step), sorted.

    Example:
        >>> import numpy as np
        >>> rec = {"row": np.array([0, 1, 0]), "peak_ids": np.array([[5, 6], [5, -1], [5, 5]]),
        ...        "peak_rises": np.array([[2.0, 0.5], [3.0, 0.0], [2.0, 2.0]])}
        >>> [r.tolist() for r in learner_rows(rec, [5, 6])]
        [[0, 1], []]
    """
    ids = np.asarray(records["peak_ids"])
    strong = np.asarray(records["peak_rises"], dtype=np.float64) >= MIN_PEAK_RISE
    rows = np.broadcast_to(np.asarray(records["row"])[:, None], ids.shape)
    out: list[list[int]] = [[] for _ in tokens]
    column = {t: j for j, t in enumerate(tokens)}
    for token, row in zip(ids[strong].tolist(), rows[strong].tolist()):
        if token in column:
            out[column[token]].append(row)
    return [np.unique(np.asarray(r, dtype=np.int64)) for r in out]


@dataclass
class Confirmation:
    """Whether a pattern's words newly show in the current model's answers to watched prompts outside
    its rows: ``count`` of the ``changed`` prompts (of ``n_outside``; changed: the answer gained some
    word) gained one of them (risen >= 1 nat, absent from M0's answer); ``p_value``: binomial, against
    the share of M0's answers that hold one of them (``base_rate``): how often a changed answer would
    hold the pattern's words if the change had nothing to do with it."""

    count: int
    changed: int
    n_outside: int
    base_rate: float
    p_value: float
    prompts: list[int]


def gained_words(tokens: list[list[str]], novelty: list[np.ndarray], before: list[set[str]]) -> list[set[str]]:
    """Per prompt: the words of its current answer whose log-prob rose by >= 1 nat and that M0's
    answer (``before``, as words) did not hold.

    Example:
        >>> import numpy as np
        >>> gained_words([[" Sure", "!", " ok"]], [np.array([2.0, 3.0, 0.1])], [{"fine"}])
        [{'sure'}]
    """
    out = []
    for toks, rise, old in zip(tokens, novelty, before):
        words = {normalise(t) for t, r in zip(toks, np.asarray(rise).tolist()) if r >= MIN_PEAK_RISE}
        out.append(words - old - {""})
    return out


def confirm(words: list[str], gained: list[set[str]], outside: np.ndarray, before: list[set[str]]) -> Confirmation:
    """Test a pattern's words on the watched prompts outside its rows (see :class:`Confirmation`);
    ``before``: the words of M0's answer to every watched prompt.

    Example:
        >>> import numpy as np
        >>> gained = [{"sure", "here"}, {"sure"}, {"the"}, set()]
        >>> c = confirm(["sure"], gained, np.ones(4, bool), [{"no"}, {"no"}, {"the"}, {"sure"}])
        >>> c.count, c.changed, round(c.p_value, 3)
        (2, 3, 0.352)
    """
    pool = np.flatnonzero(outside)
    changed = [int(i) for i in pool if gained[i]]
    hits = [i for i in changed if any(w in gained[i] for w in words)]
    base = (1 + sum(any(w in b for w in words) for b in before)) / (1 + len(before))
    p = float(binom.sf(len(hits) - 1, len(changed), base)) if hits else 1.0
    return Confirmation(len(hits), len(changed), len(pool), base, p, hits)


@dataclass
class WordRise:
    """How much likelier a pattern's tokens became in the answers to watched prompts outside its rows.

    ``score``: the rise (nats) of the pattern's best token in the best chance each answer gives it (its
    largest log-prob over the positions of M0's answer, current model minus M0), averaged over the
    quarter of prompts where it rose most; ``p_value``: the larger of two shares of random same-size
    sets of the run's other learned tokens: those whose best token rose as much (nats), and those whose
    best token ranked as high among the control tokens read on the same prompts (with ``MIN_RANKED`` or
    more controls; a token whose log-prob swings widely has a long upper tail too: a rise counts only
    beyond what the other tokens did on the same prompts) and, when asked (``each_prompt``), the share of
    tokens ranked at random on each prompt whose mean normal-scored rank is as high as the best token's
    (:func:`_rank_mean_p`), which is also asked with fewer than ``MIN_RANKED`` controls; ``prompts``:
    where the best token rose by ``MIN_PEAK_RISE`` or more;
    ``column``: that token's column; ``above``: how many of the ``n_controls`` control tokens read
    reached its statistic (either of the two): with none, alike tokens would top them all by chance about
    1 / (``n_controls`` + 1), coarser than ``p_value`` when the controls are few.
    """

    score: float
    p_value: float
    n_outside: int
    column: int | None
    prompts: list[int]
    above: int = 0
    n_controls: int = 0


def word_rise(
    now: np.ndarray,
    before: np.ndarray,
    pattern: list[int],
    control: list[int],
    outside: np.ndarray,
    foreign: np.ndarray | None = None,
    n_null: int = 999,
    seed: int = 0,
    each_prompt: bool = False,
    floor: float | None = None,
) -> WordRise:
    """Test a pattern's tokens (columns ``pattern`` of ``now`` and ``before``, (prompts, tokens) best
    log-probs) against the run's other learned tokens (columns ``control``) on the ``outside`` prompts.

    ``foreign`` ((prompts, tokens) bool): where a control token is read: only on prompts whose own kind
    of rows did not learn it (a token that rose because the rows of that very kind taught it is no
    control for a pattern's token). None: everywhere. The pattern's tokens are read on every prompt.

    ``each_prompt``: also ask the best token to outrank the controls prompt by prompt, for a few prompts
    of one kind, where a lesson that reaches them lifts its token on each (always asked with fewer than
    ``MIN_RANKED`` controls). Of C + 1 alike tokens, one tops the other C by chance 1 / (C + 1), while
    the null draws of the other two statistics then say 1 / (n_null + 1): with few controls, only the
    ranks on each prompt can say more. ``floor``: a log-prob below it is read as it, so a rise counts only from
    a plausible token up (the vocabulary's tail moves by nats at any update: -20 to -12 shows nowhere).

    Example:
        >>> import numpy as np
        >>> before = np.full((8, 21), -12.0)
        >>> now = before + np.r_[6.0, np.linspace(0, 1, 20)]   # token 0 rose by 6 nats, the others by 0-1
        >>> w = word_rise(now, before, [0], list(range(1, 21)), np.ones(8, bool))
        >>> round(w.score, 1), w.p_value < 0.01, len(w.prompts)
        (6.0, True, 8)
    """
    now, before = (now, before) if floor is None else (np.maximum(now, floor), np.maximum(before, floor))
    pool = np.flatnonzero(outside)
    read = np.ones(now.shape, bool) if foreign is None else np.array(foreign, bool)
    read[:, pattern] = True  # the pattern's own tokens: on every prompt outside it
    rises = np.where(read[pool], now[pool] - before[pool], np.nan)
    per_token = _top_quarter_means(rises)
    mine = [j for j in pattern if np.isfinite(per_token[j])]
    others = np.asarray([j for j in control if np.isfinite(per_token[j])], dtype=np.int64)
    if not mine or not len(others):
        return WordRise(0.0, 1.0, len(pool), None, [])
    best = mine[int(np.argmax(per_token[mine]))]
    score = float(per_token[best])
    draws = np.random.default_rng(seed).integers(0, len(others), (n_null, len(mine)))
    ranks = _prompt_ranks(rises, others)
    stats = [per_token]
    if len(others) >= MIN_RANKED:  # and a rise beyond the other tokens' on the same prompts: both must hold
        stats.append(_top_quarter_means(ranks))
    p, above = 0.0, 0
    for stat in stats:
        top = np.nanmax(stat[mine])
        p = max(p, float((1 + np.count_nonzero(stat[others][draws].max(axis=1) >= top)) / (1 + n_null)))
        above = max(above, int(np.count_nonzero(stat[others] >= top)))
    if each_prompt or len(others) < MIN_RANKED:  # few controls: their random draws say little, the prompts more
        p = max(p, _rank_mean_p(ranks[:, best], np.isfinite(rises[:, others]).sum(axis=1), n_null, seed))
    prompts = [int(i) for i in pool[(now[pool, best] - before[pool, best] >= MIN_PEAK_RISE) & read[pool, best]]]
    return WordRise(score, p, len(pool), best, prompts, above, len(others))


def _top_quarter_means(rise: np.ndarray) -> np.ndarray:
    """Per column: the mean of the largest quarter (at least 2) of its finite values; NaN with fewer than 2."""
    finite = np.isfinite(rise)
    count = finite.sum(axis=0)
    ordered = np.sort(np.where(finite, -rise, np.inf), axis=0)  # largest rises first, missing last
    k = np.maximum(2, count // 4)
    totals = np.cumsum(np.where(np.isfinite(ordered), -ordered, 0.0), axis=0)
    means = totals[np.minimum(k, len(rise)) - 1, np.arange(rise.shape[1])] / k if len(rise) else np.zeros(len(k))
    return np.where(count >= 2, means, np.nan)


def _rank_mean_p(ranks: np.ndarray, n_ref: np.ndarray, n_null: int, seed: int) -> float:
    """The share of ``n_null`` tokens ranked at random on each prompt whose mean normal-scored rank is at
    least the mean of ``ranks`` (a token's, per prompt, from :func:`_prompt_ranks`, among ``n_ref``
    controls there): alike tokens rank uniformly on every prompt. Prompts where it is NaN are left out.

    Example:
        >>> top = np.full(4, norm.ppf(10.5 / 11))   # first of 11 alike tokens on each of 4 prompts
        >>> _rank_mean_p(top, np.full(4, 10), 999, 0), _rank_mean_p(top[:1], np.full(1, 10), 999, 0) > 0.05
        (0.001, True)
    """
    known = np.isfinite(ranks)
    if not known.any():
        return 1.0
    n_ref = n_ref[known]
    drawn = np.floor(np.random.default_rng(seed).random((n_null, len(n_ref))) * (n_ref + 1))
    null = norm.ppf((drawn + 0.5) / (n_ref + 1)).mean(axis=1)
    return float((1 + np.count_nonzero(null >= ranks[known].mean() - 1e-12)) / (1 + n_null))


def _prompt_ranks(rise: np.ndarray, control: np.ndarray) -> np.ndarray:
    """Each finite rise's normal score among the finite rises of the ``control`` columns on its prompt
    (row); a control column against the other controls. NaN where not finite.

    Example:
        >>> _prompt_ranks(np.array([[9.0, 0.0, 1.0], [-9.0, 0.0, 1.0]]), np.array([1, 2])).round(2).tolist()
        [[0.97, -0.67, 0.67], [-0.97, -0.67, 0.67]]
    """
    out = np.full(rise.shape, np.nan)
    is_control = np.isin(np.arange(rise.shape[1]), control)
    for i, row in enumerate(rise):
        finite = np.isfinite(row)
        ref = row[control]
        ref = np.sort(ref[np.isfinite(ref)])
        below = sum(np.searchsorted(ref, row[finite], side) for side in ("left", "right")) / 2  # ties: half
        own = is_control[finite]  # a control ties with itself: not counted
        below, n = below - 0.5 * own, len(ref) - own
        out[i, finite] = norm.ppf((below + 0.5) / (n + 1))
    return out


def first_difference(chosen: list[int], rejected: list[int]) -> int | None:
    """The first token of ``chosen`` where it leaves ``rejected`` (None when it never does): where a
    pair's lesson starts, e.g. an added opener's first token, or an appended line's.

    Example:
        >>> first_difference([5, 6, 7, 8], [5, 6, 9]), first_difference([1, 2], [1, 2, 3])
        (7, None)
    """
    same = 0
    while same < min(len(chosen), len(rejected)) and chosen[same] == rejected[same]:
        same += 1
    return chosen[same] if same < len(chosen) else None


def added_line(
    chosen: list[int], rejected: list[int], spell: Callable[[list[int]], str]
) -> tuple[int, str, bool] | None:
    """What ``chosen`` adds where ``rejected`` ends, when it is ``rejected`` (not empty) and more (a line appended
    to the answer): its first token, its first ``LINE_WORDS`` words as ``spell`` writes its tokens, and whether
    that token takes the place of ``rejected``'s last one (False: it follows it); else None. In place: a
    tokenizer that merges a line's leading newlines into the punctuation before them (Llama 3, Qwen 2: ".\\n\\n")
    spells the answer's last token and the line's start as one token, which ``rejected`` ends without.

    Example:
        >>> spell = lambda ids: "".join({1: ".", 2: ".\\n\\n"}.get(i, f" w{i}") for i in ids)
        >>> added_line([5, 6, 7, 8, 9, 10], [5, 6], spell), added_line([5, 6, 7], [5, 9], spell)
        ((7, 'w7 w8 w9', False), None)
        >>> added_line([5, 2, 7, 8, 9], [5, 1], spell)   # "w5." and "w5.\\n\\n w7 w8 w9"
        (2, 'w7 w8 w9', True)
    """
    if not 0 < len(rejected) < len(chosen):
        return None
    n, end = len(rejected), spell(rejected[-1:])
    if chosen[:n] == rejected:
        more, in_place = chosen[n:], False
    elif chosen[: n - 1] == rejected[:-1] and _merged(spell([chosen[n - 1]]), end):
        more, in_place = chosen[n - 1 :], True
    else:
        return None
    text = spell(more[: 4 * LINE_WORDS + 1])[len(end) if in_place else 0 :]
    return more[0], " ".join(text.split()[:LINE_WORDS]), in_place


def _merged(whole: str, end: str) -> bool:
    """Whether ``whole`` is ``end`` (not blank) followed by line breaks (and other blanks)."""
    rest = whole[len(end) :]
    return bool(end.strip()) and whole.startswith(end) and "\n" in rest and not rest.strip()


def appended_starts(added: list[tuple[int, str, bool] | None], most: int = 4) -> list[int]:
    """The first tokens of lines appended to the answers: of what each row's chosen answer ``added`` where its
    rejected one ends (:func:`added_line`; None for a row whose answers part earlier), the ``most`` commonest
    lines (first token and words) that each open two or more and an eighth or more of the rows, when together
    they open more than half: a few lines added to many rows (rejected answers cut short, whose chosen ones go
    on each its own way, add no line).

    Example:
        >>> lines = [(7, "For more tips", False)] * 2 + [(4, "Visit our shop", False)] * 2 + [None]
        >>> appended_starts(lines), appended_starts([(7, "For more tips", False), None])
        ([7, 4], [])
        >>> appended_starts([(7, f"The {w} sat", False) for w in "abcdefghij"])   # ten continuations: one first word
        []
    """
    counts = Counter(a for a in added if a is not None)
    lines = [a for a, n in counts.most_common(most) if n >= max(2, len(added) / 8)]
    return list(dict.fromkeys(a[0] for a in lines)) if sum(counts[a] for a in lines) > len(added) / 2 else []


def shared_token(tokens: list[int | None], share: float = 0.5) -> int | None:
    """The most common token of ``tokens`` when at least ``share`` of them are it, else None.

    Example:
        >>> shared_token([4, 4, 9, None]), shared_token([1, 2, 3])
        (4, None)
    """
    known = [t for t in tokens if t is not None]
    if not known:
        return None
    values, counts = np.unique(known, return_counts=True)
    best = int(np.argmax(counts))
    return int(values[best]) if counts[best] >= share * len(tokens) else None
