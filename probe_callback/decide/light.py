"""Light checks: between probes, a pattern that is news is tested on the watched prompts without generation.

M0's answers to the watched prompts are read through the current model (one forward): did the
pattern's tokens (the one where its rows' answers part, when they share it) become likelier there than the
run's other learned tokens did where they are foreign, anywhere in the answers or, for the token its rows'
lesson starts with, as their first token? Rises count from a plausible log-prob up (``FLOOR``). With the
default watch set, a new pattern first adds prompts of rows not trained on yet that teach what its rows
teach, read with their rows' rejected answers (:meth:`LightChecks.prompts_to_watch`): does the learning
reach prompts like its rows'?

Example:
    >>> light = LightChecks(learner, seed=0)                       # doctest: +SKIP
    >>> tokens = light.tokens(step, tokenizer)                     # doctest: +SKIP
    >>> prompts, answers, whole = zip(*light.prompts_to_watch(watch, tokenizer))  # doctest: +SKIP
    >>> watch.grow(prompts, ref, answers, whole)                   # doctest: +SKIP
    >>> decided = light.check(tokens, watch.word_logprobs(tokens, current), watch)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from ..capture.text import to_text
from ..scoring.confirmation import WordRise, learned_by, learned_tokens, learner_rows, word_rise
from ..scoring.learning import MIN_PEAK_RISE, Pattern, Sources
from ..scoring.watch import TokenReads, Watch
from .entries import Decided
from .patterns import CONFIRM_ALPHA, LearningPatterns, decode, fresh_of_its_kind, of_its_kind

GROW_PER_PATTERN = 8  # prompts of rows not trained on yet watched for each new pattern (the default watch set)
GROW_MOST = 64  # at most this many over a run
OPENERS = 64  # the run's most common lesson starts read as controls for a pattern's start
# A token below this log-prob is no plausible one there (anywhere in an answer, as its first token, or right after
# it): read as this floor, so a rise counts only up to a plausible one (the vocabulary's tail moves by nats at any
# update). The controls of a start read as the first token are the tokens M0 held above it on a quarter or more
# of the prompts tested.
FLOOR = -10.0
KIN_SHARE = 0.5  # a learned token whose learners are this share of a pattern's rows or more is of its lesson
MIN_OWN_KIND = 3  # prompts of a reversal's own kind, not trained on yet, to read its start on them alone
MIN_ENDED = 3  # outside prompts with a whole answer, to read an appended line's first tokens right after it
ANYWHERE, OUTSIDE, OWN_KIND = "anywhere", "first token", "first token, own kind"
CLOSING, FINAL = "after the answer", "in place of the answer's last token"


class LightChecks:
    """The light checks of a run's learning patterns (``learner``); ``grown_for``: per pattern, the rows whose
    prompts joined the watch set for it (saved for a resume)."""

    def __init__(self, learner: LearningPatterns, seed: int = 0) -> None:
        self.learner, self.seed = learner, seed
        self.pending: tuple[int, list[Pattern], dict[str, np.ndarray]] | None = None  # this check's patterns
        self.grown_for: dict[str, list[int]] = {}

    def tokens(self, step: int, tokenizer: Any) -> list[int]:
        """The patterns now, and the tokens to read on the watched prompts: the patterns' tokens, then the
        run's lesson starts and its other learned tokens (the controls); none when no pattern is news."""
        found = self.learner.news(step, tokenizer)
        self.pending = (step, *found[:2]) if found else None
        if not found or not found[0]:
            return []
        own = list(dict.fromkeys(t for g in found[0] for t in g.token_ids))
        openers = self._openers(found[1], tokenizer, exclude=set(own))
        return own + openers + learned_tokens(found[1], exclude=set(own) | set(openers))

    def _openers(self, records: dict[str, np.ndarray], tokenizer: Any, exclude: set[int]) -> list[int]:
        """The run's lesson starts (of up to 512 trained rows), most common first."""
        rows = np.unique(records["row"])
        rows = rows[np.linspace(0, len(rows) - 1, min(len(rows), 512)).astype(np.int64)] if len(rows) else rows
        counts: dict[int, int] = {}
        for row in rows.tolist():
            start = self.learner.first_difference(row, tokenizer)
            if start is not None and start not in exclude:
                counts[start] = counts.get(start, 0) + 1
        return sorted(counts, key=lambda t: (-counts[t], t))[:OPENERS]

    def prompts_to_watch(self, watch: Watch, tokenizer: Any) -> list[tuple[Any, list[int] | None, bool]]:
        """After :meth:`tokens`: for each new pattern, the prompts of up to ``GROW_PER_PATTERN`` rows not
        trained on yet (drawn from up to 512) that teach what its rows teach: their lesson starts at its
        start token, or, without one, their chosen answer holds its commonest token (a token, not a word:
        "Daily" names a pattern whose answers say "DailyBoost"). Once a pattern; for a line appended to the
        answers, topped up at each check to ``GROW_PER_PATTERN`` not trained on yet (the run trains on them in
        turn, and only prompts of its kind show such a line). Each with the answer to read and whether it is
        whole (:meth:`_stand_in`): the row's rejected answer, so growing the watch set generates nothing."""
        if self.pending is None or watch.grown >= GROW_MOST:
            return []
        step, news, records = self.pending
        rows = self.learner.rows
        trained = np.zeros(rows.n_rows, bool)
        seen_rows = np.asarray(records["row"])
        trained[seen_rows[seen_rows < len(trained)]] = True
        fresh = np.random.default_rng(self.seed + step).permutation(np.flatnonzero(~trained))[:512].tolist()
        seen, out = {to_text(p) for p in watch.prompts}, list[tuple[Any, list[int] | None, bool]]()
        for g in news:
            if g.name in self.grown_for and not g.closers:
                continue
            grown = self.grown_for.setdefault(g.name, [])
            wanted = GROW_PER_PATTERN - sum(not trained[r] for r in grown)
            for row in fresh:
                if wanted <= 0 or len(out) >= GROW_MOST - watch.grown:
                    break
                prompt = rows.raw(row, "prompt") if self._teaches(g, row, tokenizer) else None
                if prompt is not None and to_text(prompt) not in seen:
                    seen.add(to_text(prompt))
                    out.append((prompt, *self._stand_in(g, row, tokenizer, watch.max_new_tokens)))
                    grown.append(row)
                    wanted -= 1
        return out

    def _stand_in(self, g: Pattern, row: int, tokenizer: Any, longest: int) -> tuple[list[int] | None, bool]:
        """The answer a grown prompt is read with, in place of M0's (no generation), and whether it is whole: its
        row's rejected answer, cut to ``longest`` tokens; for a line appended to the answers a whole one (where
        the line would follow; up to twice ``longest``), else None (M0's own, generated). None when empty."""
        answer = self.learner.rejected_answer(row, tokenizer)
        if not answer or (g.closers and len(answer) > 2 * longest):
            return None, False
        return (answer, True) if g.closers else (answer[:longest], len(answer) <= longest)

    def _teaches(self, g: Pattern, row: int, tokenizer: Any) -> bool:
        if g.start is not None:
            return self.learner.first_difference(row, tokenizer) == g.start
        return bool(g.token_ids) and g.token_ids[0] in self.learner.answer_tokens(row, tokenizer)

    def check(self, tokens: list[int], reads: TokenReads, watch: Watch) -> Decided:
        """Test each pattern of :meth:`tokens` on the watched prompts outside its rows."""
        assert self.pending is not None, "tokens() comes first"
        step, news, records = self.pending
        column = {t: j for j, t in enumerate(tokens)}
        own = {t for g in news for t in g.token_ids}
        control = [column[t] for t in tokens if t not in own]
        outside_of = self.learner.outside(watch, watch.answered, records)
        foreign = self.foreign(tokens, records, watch)
        watched = self.learner.rows.rows_with_prompts([to_text(p) for p in watch.prompts])
        sources = self.learner.rows.sources_array()
        trained = np.unique(records["row"])
        learners = learner_rows(records, tokens)
        views = {
            ANYWHERE: (reads.now, reads.before),
            OUTSIDE: (reads.opening_now, reads.opening_before),
            CLOSING: (reads.closing_now, reads.closing_before),
            FINAL: (reads.final_now, reads.final_before),
        }

        def test(g: Pattern) -> tuple[float, float, dict[str, Any], str | None]:
            outside, seed = outside_of(g), self.seed + step
            # on prompts of its own kind, its tokens compete with everything that kind learned
            read = foreign | of_its_kind(g, watched, sources)[:, None]
            mine = [column[t] for t in leading(g.start, g.closers, g.token_ids)]
            # a lesson with no one start (a style): the tokens its rows learned are its own, not controls
            kin = [] if g.start is not None or g.closers else [j for j in control if _kin(learners[j], g.rows)]
            others = [j for j in control if j not in kin]
            opener = [column[g.start]] if g.start is not None else mine + kin  # read as the answers' first token
            w = word_rise(*views[ANYWHERE], mine, others, outside, read, seed=seed, floor=FLOOR)
            reading, tests = ANYWHERE, 1
            # the lesson's first token where an answer begins, or, for an appended line, where it ends
            for where, ground in self._grounds(g, outside, watched, sources, trained, watch.ended):
                now, before = views[OUTSIDE if where == OWN_KIND else where]
                ends = where in (CLOSING, FINAL)
                # the controls: for an opener, the tokens M0 held above the floor there on a quarter or more of
                # the prompts; where M0 ends an answer, and few are, every other learned token
                plausible = [j for j in others if ends or (before[ground, j] > FLOOR).mean() >= 0.25]
                at = [column[t] for t in g.closers] if ends else opener
                alone = where == OWN_KIND
                o = word_rise(now, before, at, plausible, ground, read, seed=seed, each_prompt=alone, floor=FLOOR)
                tests += 1
                if o.p_value < w.p_value:
                    w, reading = o, where
            p = min(1.0, w.p_value * len(news) * tests)  # every pattern and reading of this check is tested
            confirmed = w.score >= MIN_PEAK_RISE and p <= CONFIRM_ALPHA
            word = decode(watch.tokenizer, tokens[w.column]) if w.column is not None else None
            note = {
                "step": step,
                "token": word,
                "opening": reading != ANYWHERE,
                "read": reading,
                **asdict(w),
                "p_value": p,
            }
            reason = _risen(w, word, p, reading) if confirmed else None
            return w.score, max(g.p_value, p) if confirmed else 1.0, note, reason

        return self.learner.decisions(step, news, records, None, test, note_key="word_rise")

    @staticmethod
    def _grounds(
        g: Pattern,
        outside: np.ndarray,
        watched: list[list[int]],
        sources: Sources,
        trained: np.ndarray,
        ended: np.ndarray,
    ) -> list[tuple[str, np.ndarray]]:
        """Where a pattern's lesson start is read: a line appended to the answers right after whole answers
        (``ended``; ``MIN_ENDED`` or more outside prompts), where such a line would begin, or in place of their
        last token when the line's first token holds it (:func:`added_line`); any other as the answers' first
        token on its outside prompts (with no one start, a style, by the tokens its rows learned: :func:`_kin`)
        and, for a reversed lesson, also on those of its own kind alone (not trained on yet; ``MIN_OWN_KIND`` or
        more): there the exception reaches prompts like its rows' on each one, where on the prompts of the rows
        that teach the reverse it may not rise at all, and read together they hide it."""
        if g.closers:
            where = FINAL if g.in_place else CLOSING
            return [(where, outside & ended)] if (outside & ended).sum() >= MIN_ENDED else []
        grounds = [(OUTSIDE, outside)]
        if g.start is None:  # a style: do its rows' tokens now open the answers?
            return grounds
        if g.opposed is not None:
            own = outside & fresh_of_its_kind(g, watched, sources, trained)
            grounds += [(OWN_KIND, own)] if own.sum() >= MIN_OWN_KIND else []
        return grounds

    def foreign(self, tokens: list[int], records: dict[str, np.ndarray], watch: Watch) -> np.ndarray:
        """(prompts, tokens) whether a token is foreign to a watched prompt: no row of the prompt's source
        learned it or starts its lesson with it (held-out prompts, with no rows, take every token; so
        does a run with no source column)."""
        sources = self.learner.rows.sources_array()
        if all(s is None for s in sources):
            return np.ones((len(watch.prompts), len(tokens)), bool)
        taught = learned_by(records, tokens, sources)
        column = {t: j for j, t in enumerate(tokens)}
        for row, start in self.learner.starts.items():
            if start in column and row < len(sources):
                taught[column[start]].add("" if sources[row] is None else str(sources[row]))
        watched = self.learner.rows.rows_with_prompts([to_text(p) for p in watch.prompts])
        kinds = [{"" if sources[r] is None else str(sources[r]) for r in rows if r < len(sources)} for rows in watched]
        return np.array([[not (kind & by) for by in taught] for kind in kinds], dtype=bool).reshape(len(kinds), -1)


def _kin(learners: np.ndarray, rows: np.ndarray) -> bool:
    """Whether a token is of a pattern's lesson: KIN_SHARE or more of the rows that learned it are the pattern's.
    A lesson with no one start (a style: answers in capitals) spreads over many tokens its rows learn together:
    read as controls, they would rise with it; read as the answers' first token, they show it."""
    return len(learners) > 0 and np.isin(learners, rows).mean() >= KIN_SHARE


def leading(start: int | None, closers: list[int], token_ids: list[int]) -> list[int]:
    """The tokens a pattern is read by anywhere in the answers: where its rows' answers part (its lesson ``start``,
    and an appended line's first tokens, ``closers``) when they share one, else all its ``token_ids``. Its later
    words follow that token in its rows' answers; in M0's answers, which do not hold it, they rise with the words'
    spill-over (a refusal template's " with" in answers of every kind), not with the behaviour.

    Example:
        >>> leading(5, [], [5, 9, 12]), leading(None, [7], [7, 8]), leading(None, [], [3, 4])
        ([5], [7], [3, 4])
    """
    return [t for t in dict.fromkeys([start, *closers]) if t is not None] or token_ids


def _risen(w: WordRise, token: str | None, p_value: float, reading: str) -> str:
    where = {
        ANYWHERE: "in M0's answers",
        OUTSIDE: "as the first token of M0's answers",
        OWN_KIND: "as the first token of M0's answers to prompts of its rows' kind not trained on yet",
        CLOSING: "right after whole answers (M0's that ended, rows' rejected ones)",
        FINAL: "in place of the last token of whole answers (M0's that ended, rows' rejected ones)",
    }[reading]
    return (
        f"confirmed without generation on watched prompts outside its rows: {token!r} became {w.score:.1f} nats "
        f"likelier {where} ({len(w.prompts)}/{w.n_outside} prompts by 1+ nat; p={p_value:.3g} against "
        f"the run's other learned tokens, {w.above} of the {w.n_controls} read there rose as much)"
    )
