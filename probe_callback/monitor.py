"""Score and decide at each checkpoint: behaviour scores, emergent clusters, attribution, policy.

:class:`Monitor` turns one :class:`~probe_callback.scoring.watch.Probe` into decisions and alerts, keeps the
score history, and builds the report (``report.json``'s content). It reads the vector store for
attribution but writes nothing; the callback publishes and saves.

Example:
    >>> monitor = Monitor(fitted, EmergentTracker(), RegressionPolicy(), rows, store_dir)  # doctest: +SKIP
    >>> alerts = monitor.checkpoint(probe, watch)                                          # doctest: +SKIP
    >>> monitor.report(paused_at_step=None, checkpoint=None)["behaviours"]                 # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np

from .capture.rows import RowIndex
from .capture.text import to_text
from .decide.alerts import Alert
from .decide.policy import Decision, RegressionPolicy
from .scoring.attribution import combine_scores, rank_rows, top_rows
from .scoring.behaviours import FittedBehaviour, score_behaviour
from .scoring.blame import SourceBlame, top_sources, top_steps
from .scoring.confirmation import (
    confirm,
    first_difference,
    gained_words,
    learned_by,
    learned_tokens,
    shared_token,
    word_rise,
)
from .scoring.discovery import EmergentBehaviour, EmergentTracker, prompt_drift, random_set_directions
from .scoring.learning import (
    MIN_PEAK_RISE,
    Pattern,
    PatternNames,
    Sources,
    answer_words,
    find_patterns,
    normalise,
    one_per_name,
    source_enrichment,
)
from .scoring.unit import unit_rows
from .scoring.watch import Probe, TokenReads, Watch
from .store.vectors import VectorStore

logger = logging.getLogger("probe_callback")
SAMPLES = 3
MIN_THRESHOLD = 0.05  # nats/token
PATTERN_ALPHA = 0.01  # a learning pattern is news at this level (corrected for every pattern tested)
CONFIRM_ALPHA = 0.05  # the probe confirms it when its words are gained beyond this share of control words
MIN_CONFIRMED = 2  # ... on at least this many watched prompts outside its rows
GROW_PER_PATTERN = 8  # prompts of rows not trained on yet watched for each new pattern (the defaults)
GROW_MOST = 64  # at most this many over a run


def default_threshold(fitted: FittedBehaviour) -> float:
    """Regression threshold of a supervised behaviour's log-likelihood margin when the user gave none:
    a tenth of the gap M0 keeps between its negative and positive examples (nats/token), at least 0.05.

    Generic drift moves likelihoods a little everywhere (confident answers lose some of theirs); a
    regression closes a real part of the gap between what M0 says and what the behaviour says.
    """
    if fitted.behaviour.threshold is not None:
        return float(fitted.behaviour.threshold)
    gap = float(fitted.ref_logp_negative.mean() - fitted.ref_logp_positive.mean())
    return max(MIN_THRESHOLD, 0.1 * gap)


def _finite(x: Any) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


class Monitor:
    """The score -> decide stage for supervised and emergent behaviours."""

    def __init__(
        self,
        fitted: list[FittedBehaviour],
        tracker: EmergentTracker,
        policy: RegressionPolicy,
        rows: RowIndex,
        store_dir: Path,
        layers: list[int],
        top_k: int = 50,
        seed: int = 0,
    ) -> None:
        self.fitted, self.tracker, self.policy, self.rows = fitted, tracker, policy, rows
        self.store_dir, self.layers, self.top_k, self.seed = Path(store_dir), layers, top_k, seed
        self.behaviours: dict[str, dict[str, Any]] = {}
        self.directions: dict[str, np.ndarray] = {}
        self.prompt_drift_history: list[dict[str, Any]] = []
        self.drift_map: dict[str, Any] | None = None
        self.last_step = 0
        self.patterns: list[Pattern] = []
        self.pattern_names = PatternNames()
        self.pattern_scores: dict[str, np.ndarray] = {}  # each reported pattern's score of every row
        self.failures: list[dict[str, Any]] = []  # stages that failed, for the report
        self._answers: dict[int, set[str]] = {}  # the words of each row's chosen answer (cached)
        self._starts: dict[int, int | None] = {}  # where each row's chosen answer leaves its rejected one
        self.learning: dict[str, Any] | None = None  # the last check's patterns, for the report
        self._light: tuple[int, list[Pattern], dict[str, np.ndarray]] | None = None  # a light check's patterns
        self.grown_for: list[str] = []  # the patterns whose like prompts joined the watch set

    # ----- per checkpoint -----------------------------------------------------------------------
    def checkpoint(self, probe: Probe, watch: Watch) -> list[Alert]:
        """Score every behaviour at this checkpoint, decide, attribute what is flagged; return alerts.

        Numpy only: every model forward (behaviour likelihoods included) is already in ``probe``.
        """
        self.last_step = probe.step
        decisions: list[tuple[Decision, np.ndarray | None]] = []
        stages: list[tuple[str, Callable[[], list[tuple[Decision, np.ndarray | None]]]]] = [
            *((f"supervised:{f.behaviour.name}", partial(self._supervised, f, probe, watch)) for f in self.fitted),
            ("learning", partial(self._learning, probe.step, watch.tokenizer, (probe, watch))),
            ("emergent", partial(self._emergent, probe, watch)),
        ]
        for stage, run in stages:  # each stage fails on its own: a failure is reported, the rest goes on
            try:
                decisions += run()
            except Exception as exc:
                self.record_failure(probe.step, stage, exc)
        return self._alerts(decisions)

    def record_failure(self, step: int, stage: str, exc: BaseException) -> None:
        """Log and report a stage that failed at ``step`` (training goes on)."""
        logger.warning("probe_callback: %s at step %d failed: %r", stage, step, exc)
        self.failures.append({"step": step, "stage": stage, "error": repr(exc)[:500]})

    def learning_check(self, step: int, tokenizer: Any) -> list[Alert]:
        """Between probes: the data side alone (free); new patterns are INFO "being learned"."""
        self.last_step = max(self.last_step, step)
        return self._alerts(self._learning(step, tokenizer, None))

    def _alerts(self, decisions: list[tuple[Decision, np.ndarray | None]]) -> list[Alert]:
        alerts = []
        for decision, direction in decisions:
            entry = self.behaviours[decision.name]
            entry.update(level=decision.level, p_value=_finite(decision.p_value), threshold=decision.threshold)
            if decision.is_regression and entry["flagged_at_step"] is None:
                entry["flagged_at_step"] = decision.step
            if entry["top_rows"] and direction is not None:
                self.directions[decision.name] = direction
            alert = decision.to_alert(entry["top_rows"][:5], entry["top_sources"][:3])
            if alert is not None:
                alerts.append(alert)
        return alerts

    def _entry(self, name: str, kind: str) -> dict[str, Any]:
        return self.behaviours.setdefault(
            name,
            {
                "name": name,
                "kind": kind,
                "flagged_at_step": None,
                "level": None,
                "p_value": None,
                "threshold": None,
                "score_history": [],
                "top_rows": [],
                "top_steps": [],
                "top_sources": [],
                "samples": [],
            },
        )

    def _supervised(
        self, fitted: FittedBehaviour, probe: Probe, watch: Watch
    ) -> list[tuple[Decision, np.ndarray | None]]:
        layer_pos = [self.layers.index(x) for x in fitted.layers]
        s = score_behaviour(
            fitted,
            logps=probe.likelihoods[fitted.behaviour.name],
            behaviour_vectors=probe.change[:, layer_pos],
            response_activations=probe.response_means[:, layer_pos],
            responses=list(zip(watch.texts, probe.responses)),
            control_deltas=probe.control,
        )
        name = fitted.behaviour.name
        entry = self._entry(name, "supervised")
        entry["score_history"].append([probe.step, s["ll_margin"]])
        entry["probe_accuracy"] = s["probe_accuracy"]
        entry.setdefault("metrics_history", []).append({"step": probe.step, **_jsonable_scores(s)})
        decision = self.policy.update(name, "supervised", probe.step, s["ll_margin"], s["ll_margin_p"])
        primary = fitted.layers.index(self.layers[0]) if self.layers[0] in fitted.layers else 0
        direction = fitted.probing_vectors[primary]
        if decision.level in ("WARN", "ERROR"):  # attribute what is flagged
            rng = np.random.default_rng(self.seed + probe.step)
            entry.update(self.attribute(direction, lambda k: fitted.split_vectors(primary, k, rng)))
        return [(decision, direction)]

    def _learning(
        self, step: int, tokenizer: Any, probed: tuple[Probe, Watch] | None
    ) -> list[tuple[Decision, np.ndarray | None]]:
        """Patterns of the learning record; at a probe, each one is tested on the watched prompts."""
        found = self._news(step, tokenizer)
        if found is None:
            return []
        news, records, store = found
        if probed is None:
            return self._pattern_decisions(step, news, records, None, None)
        before, gained, outside_of = self._gained(*probed, records)

        def check(g: Pattern) -> tuple[float, float, dict[str, Any], str | None]:
            conf = confirm(g.words, gained, outside_of(g), before)
            confirmed = conf.count >= MIN_CONFIRMED and conf.p_value <= CONFIRM_ALPHA
            note = {"step": step, **asdict(conf)}
            return (
                conf.count / max(conf.n_outside, 1),
                g.p_value if confirmed else 1.0,
                note,
                (_confirmed(g, conf) if confirmed else None),
            )

        return self._pattern_decisions(step, news, records, store, check, note_key="confirmation")

    def light_tokens(self, step: int, tokenizer: Any) -> list[int]:
        """Before a light check (rank 0): the learning record's patterns now, and the tokens to test on
        the watched prompts: the patterns' tokens, then the run's other learned tokens (the control);
        none when no pattern is news."""
        self.last_step = max(self.last_step, step)
        found = self._news(step, tokenizer)
        self._light = (step, *found[:2]) if found else None
        if not found or not found[0]:
            return []
        own = list(dict.fromkeys(t for g in found[0] for t in g.token_ids))
        openers = self._openers(found[1], tokenizer, exclude=set(own))
        return own + openers + learned_tokens(found[1], exclude=set(own) | set(openers))

    def _openers(self, records: dict[str, np.ndarray], tokenizer: Any, exclude: set[int], most: int = 64) -> list[int]:
        """The run's lesson starts (where trained rows' chosen answers leave their rejected ones; up to 512
        rows), most common first: a control for a pattern's start read as the answer's first token."""
        rows = np.unique(records["row"])
        rows = rows[np.linspace(0, len(rows) - 1, min(len(rows), 512)).astype(np.int64)] if len(rows) else rows
        starts = [self._first_difference(int(r), tokenizer) for r in rows]
        counts: dict[int, int] = {}
        for t in starts:
            if t is not None and t not in exclude:
                counts[t] = counts.get(t, 0) + 1
        return sorted(counts, key=lambda t: (-counts[t], t))[:most]

    def prompts_to_watch(self, watch: Watch, tokenizer: Any) -> list[Any]:
        """After :meth:`light_tokens`: for each new pattern, prompts of up to ``GROW_PER_PATTERN`` rows not
        trained on yet that teach what its rows teach (their lesson starts at its start token, or, without
        one, their chosen answer holds its first word), once a pattern: does the learning reach prompts
        like its rows' that the model has not seen? (Rows drawn from up to 512 untrained ones.)"""
        if self._light is None or watch.grown >= GROW_MOST:
            return []
        step, news, records = self._light
        wanted = [g for g in news if g.name not in self.grown_for]
        self.grown_for += [g.name for g in wanted]
        trained = np.zeros(self.rows.n_rows, bool)
        trained[np.asarray(records["row"])[np.asarray(records["row"]) < len(trained)]] = True
        fresh = np.random.default_rng(self.seed + step).permutation(np.flatnonzero(~trained))[:512]
        seen, out = {to_text(p) for p in watch.prompts}, []
        for g in wanted:
            taken = 0
            for row in fresh.tolist():
                like = (
                    self._first_difference(row, tokenizer) == g.start
                    if g.start is not None
                    else g.words[0] in self._answer_words(row)
                )
                prompt = self.rows.raw(row, "prompt") if like else None
                if prompt is not None and to_text(prompt) not in seen:
                    seen.add(to_text(prompt))
                    out.append(prompt)
                    taken += 1
                if taken == GROW_PER_PATTERN:
                    break
        return out[: GROW_MOST - watch.grown]

    def light_check(self, tokens: list[int], reads: TokenReads, watch: Watch) -> list[Alert]:
        """Test each pattern of :meth:`light_tokens` on the watched prompts outside its rows: did its
        tokens become likelier in M0's answers than the run's other learned tokens did, anywhere in them
        or, for the token its rows' lesson starts with, as their first token (no generation)?"""
        assert self._light is not None, "light_tokens() comes first"
        step, news, records = self._light
        column = {t: j for j, t in enumerate(tokens)}
        own = {t for g in news for t in g.token_ids}
        control = [column[t] for t in tokens if t not in own]
        outside_of = self._outside(watch, watch.answered, records)
        foreign = self._foreign(tokens, records, watch)

        watched = self.rows.rows_with_prompts([to_text(p) for p in watch.prompts])

        def check(g: Pattern) -> tuple[float, float, dict[str, Any], str | None]:
            outside, seed = outside_of(g), self.seed + step
            # on prompts of its own kind, its tokens compete with everything that kind learned
            read = foreign | of_its_kind(g, watched, self.rows.sources_array())[:, None]
            w = word_rise(reads.now, reads.before, [column[t] for t in g.token_ids], control, outside, read, seed=seed)
            opening, tests = False, 1
            if g.start is not None:  # the lesson's first token, as the answers' first token
                o = word_rise(
                    reads.opening_now, reads.opening_before, [column[g.start]], control, outside, read, seed=seed
                )
                opening, tests = o.p_value < w.p_value, 2
                w = o if opening else w
            p = min(1.0, w.p_value * len(news) * tests)  # every pattern and reading of this check is tested
            confirmed = w.score >= MIN_PEAK_RISE and p <= CONFIRM_ALPHA
            word = _decode(watch.tokenizer, tokens[w.column]) if w.column is not None else None
            note = {"step": step, "token": word, "opening": opening, **asdict(w), "p_value": p}
            reason = _risen(w, word, p, opening) if confirmed else None
            return w.score, max(g.p_value, p) if confirmed else 1.0, note, reason

        return self._alerts(self._pattern_decisions(step, news, records, None, check, note_key="word_rise"))

    def _foreign(self, tokens: list[int], records: dict[str, np.ndarray], watch: Watch) -> np.ndarray:
        """(prompts, tokens) whether a token is foreign to a watched prompt: no row of the prompt's source
        learned it (held-out prompts, with no rows, take every token; so does a run with no source column)."""
        sources = self.rows.sources_array()
        if all(s is None for s in sources):
            return np.ones((len(watch.prompts), len(tokens)), bool)
        column = {t: j for j, t in enumerate(tokens)}
        taught = learned_by(records, tokens, sources)
        for row, start in self._starts.items():  # a lesson's first token is taught by its row's source too
            if start in column and row < len(sources):
                taught[column[start]].add("" if sources[row] is None else str(sources[row]))
        watched = self.rows.rows_with_prompts([to_text(p) for p in watch.prompts])
        kinds = [{"" if sources[r] is None else str(sources[r]) for r in rows if r < len(sources)} for rows in watched]
        return np.array([[not (kind & by) for by in taught] for kind in kinds], dtype=bool).reshape(len(kinds), -1)

    def _news(self, step: int, tokenizer: Any) -> tuple[list[Pattern], dict[str, np.ndarray], VectorStore] | None:
        """The learning record's patterns now (kept for the report), and those that are news, one per name."""
        try:
            store = VectorStore.open(self.store_dir)
        except FileNotFoundError:
            return None
        records = store.memberships()
        decode = partial(_decode, tokenizer)
        self.patterns = find_patterns(
            records,
            decode,
            self.rows.sources_array(),
            self._answer_words,
            partial(self._first_difference, tokenizer=tokenizer),
            seed=self.seed + step,
        )
        news = [g for g in self.patterns if g.p_value <= PATTERN_ALPHA]
        for g in news:  # where the rows' lesson starts: a token the light check reads in M0's answers too
            g.start = shared_token([self._first_difference(int(r), tokenizer) for r in g.rows[:64]])
            if g.start is not None and g.start not in g.token_ids:
                g.token_ids.append(g.start)
        centre = _mean_unit_vector(store)
        self.pattern_names.assign(news, [_rows_direction(store, g.rows, centre) for g in news])
        news = one_per_name(news)
        self.learning = {"step": step, "patterns": [g.summary(5) for g in self.patterns[:10]]}
        return news, records, store

    def _pattern_decisions(
        self,
        step: int,
        news: list[Pattern],
        records: dict[str, np.ndarray],
        store: VectorStore | None,
        check: Callable[[Pattern], tuple[float, float, dict[str, Any], str | None]] | None,
        note_key: str = "",
    ) -> list[tuple[Decision, np.ndarray | None]]:
        """A pattern seen for the first time is INFO "being learned"; with a ``check`` (pattern -> score,
        p-value, note for the report's ``note_key``, reason when confirmed) it is tested and decided like
        any behaviour."""
        out: list[tuple[Decision, np.ndarray | None]] = []
        for g in news:
            entry = self._entry(g.name, "emergent")
            entry.update(self._pattern_entry(g, records, store))
            entry["score_history"].append([step, g.score])
            if not self.policy.knows(g.name):
                decision = self.policy.update(g.name, "emergent", step, g.score, None)
                out.append((replace(decision, reason=_being_learned(g)), None))
            if check is None:
                continue
            score, p_value, note, reason = check(g)
            entry[note_key] = note
            decision = self.policy.update(g.name, "emergent", step, score, p_value)
            if reason is not None:
                decision = replace(decision, reason=f"{decision.reason}; {reason}")
            out.append((decision, None))
        return out

    def _first_difference(self, row: int, tokenizer: Any) -> int | None:
        """The token where a row's chosen answer first leaves its rejected one (cached)."""
        if row not in self._starts:
            chosen, rejected = (_content(self.rows.text(row, f)) for f in ("chosen", "rejected"))
            ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in (chosen, rejected)]
            self._starts[row] = first_difference(*ids)
        return self._starts[row]

    def _answer_words(self, row: int) -> set[str]:
        if row not in self._answers:
            self._answers[row] = answer_words(self.rows.text(row, "chosen"))
        return self._answers[row]

    def _gained(
        self, probe: Probe, watch: Watch, records: dict[str, np.ndarray]
    ) -> tuple[list[set[str]], list[set[str]], Callable[[Pattern], np.ndarray]]:
        """The words of M0's answers, those each current answer gained, and which watched prompts lie
        outside a pattern (see :func:`outside_prompts`)."""
        before = [{normalise(t) for t in watch.answers([[x] for x in r])} for r in watch.r0]
        return before, gained_words(probe.tokens, probe.novelty, before), self._outside(watch, probe.valid, records)

    def _outside(
        self, watch: Watch, valid: np.ndarray, records: dict[str, np.ndarray]
    ) -> Callable[[Pattern], np.ndarray]:
        """pattern -> the ``valid`` watched prompts that can confirm it (see :func:`outside_prompts`)."""
        watched = self.rows.rows_with_prompts([to_text(p) for p in watch.prompts])
        trained = np.unique(records["row"])
        return partial(
            outside_prompts, watched=watched, sources=self.rows.sources_array(), valid=valid, trained=trained
        )

    def _pattern_entry(self, g: Pattern, records: dict[str, np.ndarray], store: VectorStore | None) -> dict[str, Any]:
        """Rows, steps and sources of a pattern: its own rows first (best learning first), then, with a
        ``store`` (at probes and pauses, not the cheap checks between them), the rows whose datapoint
        vectors point its way (rows not trained on yet, after a pause's datapoint pass)."""
        seen = np.unique(records["row"])
        signal = np.full(self.rows.n_rows, np.nan)
        signal[seen[seen < len(signal)]] = -1e3  # trained on, not in the pattern: below every member
        signal[g.rows] = g.z
        scores = signal
        direction = None if store is None else _rows_direction(store, g.rows, _mean_unit_vector(store))
        if store is not None and direction is not None and np.linalg.norm(direction) > 0:
            cosine = rank_rows(store, direction, top_k=1, n_null=0, seed=self.seed).cosine
            scores = combine_scores(
                [signal, np.pad(cosine, (0, max(0, len(signal) - len(cosine))), constant_values=np.nan)]
            )
        self.pattern_scores[g.name] = scores
        first_step = _first_steps(records)
        return {
            "words": g.words,
            "found_by": "learning record",
            "top_rows": [self._row(int(r), float(scores[r]), first_step) for r in top_rows(scores, self.top_k)],
            "top_steps": [s.to_dict() for s in top_steps(scores, records)],
            "top_sources": source_enrichment(g.rows, self.rows.sources_array(), seen),
            "attribution_p_value": g.p_value,
            "pattern": g.summary(),
        }

    def _emergent(self, probe: Probe, watch: Watch) -> list[tuple[Decision, np.ndarray | None]]:
        ok = np.flatnonzero(probe.valid)
        seen = self.tracker.update(
            probe.step,
            [watch.base_tokens()[i] for i in ok],
            [probe.cur_tokens[i] for i in ok],
            [probe.novelty[i] for i in ok],
            [probe.tokens[i] for i in ok],
        )
        vectors = self.tracker.vectors
        self._drift_map(vectors, watch, ok, seen, probe.step)
        drift = prompt_drift(probe.prompt_current[ok, 0], probe.prompt_reference[ok, 0])
        self.prompt_drift_history.append(
            {"step": probe.step, "median": drift.median, "p90": drift.p90, "max": drift.max, "outliers": drift.outliers}
        )
        out: list[tuple[Decision, np.ndarray | None]] = []
        for b in self.tracker.behaviours.values():
            name = f"emergent-{b.id}"
            if not (b.significant and b.step == probe.step):
                if name in self.behaviours:  # reported before, not significant now: its streak ends here
                    score = b.drift if b.step == probe.step else 0.0
                    decision = self.policy.update(name, "emergent", probe.step, score, None)
                    out.append((decision, self.directions.get(name, b.direction)))
                continue
            entry = self._entry(name, "emergent")
            entry["label"] = " ".join(t.strip() for t in b.tokens[:5] if t.strip())
            entry["members"] = [int(ok[i]) for i in b.members]
            entry["samples"] = self._samples(entry["members"], probe, watch)
            entry["score_history"].append([probe.step, b.drift])
            rng = np.random.default_rng(self.seed + b.step)
            draw_null = partial(random_set_directions, vectors, b.members, rng=rng)
            entry.update(self.attribute(b.direction, draw_null))
            entry["links"] = self._links(b, entry)
            self._take_rows(entry)
            # Discovery only screens; an alarm needs the data blame to beat random sets of other watched prompts.
            p = entry.get("attribution_p_value", 1.0)
            out.append((self.policy.update(name, "emergent", probe.step, b.drift, p), b.direction))
        return out

    def _links(self, b: EmergentBehaviour, entry: dict[str, Any]) -> list[dict[str, Any]]:
        """Learning patterns that share a word with the cluster's risen tokens, and how many of the
        cluster's own top rows (by its activation direction) are the pattern's rows."""
        words = {normalise(t) for t in b.tokens} - {""}
        own = [r["row"] for r in entry.get("top_rows", [])]
        links = []
        for g in self.patterns:
            shared = sorted(words & set(g.words))
            if shared:
                k = min(len(g.rows), len(own))
                agree = len(set(own[:k]) & set(g.rows.tolist())) / k if k else None
                links.append(
                    {
                        "pattern": g.name,
                        "shared_words": shared,
                        "pattern_p_value": g.p_value,
                        "direction_agreement": agree,
                    }
                )
        return sorted(links, key=lambda link: link["pattern_p_value"])

    def _take_rows(self, entry: dict[str, Any]) -> None:
        """A cluster linked to a significant learning pattern takes the pattern's rows and confidence."""
        link = next((x for x in entry["links"] if x["pattern_p_value"] <= PATTERN_ALPHA), None)
        if link is None or link["pattern"] not in self.behaviours:
            return
        pattern = self.behaviours[link["pattern"]]
        entry.update({k: pattern[k] for k in ("top_rows", "top_steps", "top_sources")}, rows_from=link["pattern"])
        entry["attribution_p_value"] = min(entry.get("attribution_p_value", 1.0), link["pattern_p_value"])

    def _samples(self, members: list[int], probe: Probe, watch: Watch) -> list[dict[str, str]]:
        r0 = watch.answers(watch.r0)
        return [{"prompt": watch.texts[i], "before": r0[i], "after": probe.responses[i]} for i in members[:SAMPLES]]

    def _drift_map(self, v: np.ndarray, watch: Watch, ok: np.ndarray, seen: list[EmergentBehaviour], step: int) -> None:
        labels = np.full(len(ok), -1)
        for b in seen:
            if b.significant:
                labels[b.members] = b.id
        centred = v - v.mean(axis=0)
        axes = np.linalg.svd(centred, full_matrices=False)[2][:2] if len(v) > 1 else np.eye(2, v.shape[1])
        self.drift_map = {
            "step": step,
            "points": (centred @ axes.T).tolist(),
            "labels": labels.tolist(),
            "prompts": [watch.texts[i] for i in ok],
        }

    # ----- attribution --------------------------------------------------------------------------
    def attribute(self, direction: np.ndarray, draw_null: Callable[[int], np.ndarray] | None = None) -> dict[str, Any]:
        """Top rows, steps and sources for a behaviour direction (hidden size), with p-values.

        With ``draw_null`` (k -> (k, H) directions of random behaviours) the sources' blame is also
        tested against those (``blame_null_p_value``) and no p-value of it is reported below that.
        """
        try:
            store = VectorStore.open(self.store_dir)
        except FileNotFoundError:
            return {}
        if store.n_rows == 0:
            return {}
        ranking = rank_rows(store, direction, layer_pos=0, top_k=self.top_k, seed=self.seed)
        memberships = store.memberships()
        first_step = _first_steps(memberships)
        rows = [self._row(int(r), float(s), first_step) for r, s in zip(ranking.rows, ranking.scores)]
        sources = [
            {**s.to_dict(), "share_in_top": s.score}
            for s in top_sources(ranking.all_scores, cast(Sequence[Any], self.rows.sources_array()))
        ]
        steps = [s.to_dict() for s in top_steps(ranking.all_scores, memberships)]
        # Bonferroni over the sources tested; without a source column, the ranking's own p-value.
        blame = min(1.0, sources[0]["p_value"] * len(sources)) if sources else ranking.p_value
        out = {
            "top_rows": rows,
            "top_steps": steps,
            "top_sources": sources,
            "ranking_p_value": ranking.p_value,
            "attribution_p_value": blame,
        }
        if draw_null is not None and sources:
            null_blame = SourceBlame(ranking, cast(Sequence[Any], self.rows.sources_array()), store.project)
            out["blame_null_p_value"] = null_blame.p_value(direction, draw_null)
            _calibrate_blame(out)
        return out

    def _row(self, row: int, score: float, first_step: dict[int, int]) -> dict[str, Any]:
        return {
            **self.rows.describe(row),
            "score": score,
            "step": first_step.get(row),
            "prompt": self.rows.text(row, "prompt"),
            "chosen": self.rows.text(row, "chosen"),
            "rejected": self.rows.text(row, "rejected"),
        }

    def reattribute(self) -> None:
        """Rank the store again for every behaviour attributed so far (e.g. after more rows were stored)."""
        for name, direction in self.directions.items():
            entry = self.behaviours[name]
            entry.update(self.attribute(direction))
            _calibrate_blame(entry)
        store = VectorStore.open(self.store_dir)
        records = store.memberships()
        for g in one_per_name([g for g in self.patterns if g.name in self.behaviours]):
            self.behaviours[g.name].update(self._pattern_entry(g, records, store))
        for entry in self.behaviours.values():
            if entry.get("links"):
                self._take_rows(entry)

    # ----- report and state ---------------------------------------------------------------------
    def report(self, paused_at_step: int | None, checkpoint: str | None) -> dict[str, Any]:
        """The report's content (see DESIGN.md); more fields than the contract are fine."""
        clusters = [
            {
                "id": b.id,
                "size": len(b.members),
                "first_step": b.first_step,
                "significant": b.significant,
                "p_value": b.p_value,
                "drift": b.drift,
                "tokens": b.tokens,
                "prompts": self.behaviours.get(f"emergent-{b.id}", {}).get("members", []),
                "samples": self.behaviours.get(f"emergent-{b.id}", {}).get("samples", []),
            }
            for b in self.tracker.behaviours.values()
        ]
        return {
            "version": 1,
            "paused_at_step": paused_at_step,
            "checkpoint": checkpoint,
            "last_step": self.last_step,
            "layers": self.layers,
            "behaviours": list(self.behaviours.values()),
            "clusters": clusters,
            "drift_map": self.drift_map,
            "prompt_drift": self.prompt_drift_history,
            "learning": self.learning,
            "failures": self.failures,
        }

    def state(self) -> dict[str, Any]:
        return {
            "behaviours": self.behaviours,
            "drift_map": self.drift_map,
            "prompt_drift": self.prompt_drift_history,
            "last_step": self.last_step,
            "tracker": self.tracker.state(),
            "learning": self.learning,
            "pattern_names": self.pattern_names.known,
            "grown_for": self.grown_for,
            "failures": self.failures,
            "policy": self.policy.state(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.behaviours, self.drift_map = state["behaviours"], state["drift_map"]
        self.prompt_drift_history = state["prompt_drift"]
        self.last_step = state["last_step"]
        self.learning = state.get("learning")
        self.pattern_names = PatternNames(state.get("pattern_names"))
        self.grown_for = state.get("grown_for", [])
        self.failures = state.get("failures", [])
        self.tracker = EmergentTracker.from_state(state["tracker"])
        self.policy = RegressionPolicy.from_state(state["policy"])


def _calibrate_blame(entry: dict[str, Any]) -> None:
    """A behaviour's blame (overall and per source) is only as confident as its null of random
    behaviours allows."""
    floor = entry.get("blame_null_p_value")
    if floor is None or "attribution_p_value" not in entry:
        return
    entry["attribution_p_value"] = max(entry["attribution_p_value"], floor)
    entry["top_sources"] = [{**s, "p_value": max(s["p_value"], floor)} for s in entry["top_sources"]]


def outside_prompts(
    g: Pattern,
    watched: list[list[int]],
    sources: Sources,
    valid: np.ndarray,
    trained: np.ndarray,
    min_prompts: int = 8,
) -> np.ndarray:
    """Watched prompts that can confirm a pattern: not from its rows; from the sources that hold a tenth
    or more of its rows only when not trained on yet (does the learning reach prompts of its kind the
    model has not seen? a prompt it trained on says its own answer back); from any other source.
    Unless that leaves fewer than ``min_prompts`` (then every prompt not from its rows).
    ``watched``: the training rows each watched prompt comes from (none for held-out prompts);
    ``trained``: the rows trained on so far (sorted).

    Example:
        >>> import numpy as np
        >>> g = Pattern(["shop"], np.array([0, 1]), np.ones(2), 1.0, 1.0, 0.001, (1, 2), {"ads": 2})
        >>> watched = [[0], [2], [3], [4]]   # rows 0-3 are ads, row 4 is not; rows 0-2 trained
        >>> sources = np.array(["ads", "ads", "ads", "ads", "qa"], dtype=object)
        >>> outside_prompts(g, watched, sources, np.ones(4, bool), np.array([0, 1, 2]), min_prompts=1)
        array([False, False,  True,  True])
    """
    own = set(g.rows.tolist())
    not_own = np.array([not own.intersection(rows) for rows in watched], dtype=bool) & valid
    other = ~of_its_kind(g, watched, sources)
    fresh = np.array([not np.isin(rows, trained).any() for rows in watched], dtype=bool)
    ok = not_own & (other | fresh)
    return ok if ok.sum() >= min_prompts else not_own


def of_its_kind(g: Pattern, watched: list[list[int]], sources: Sources) -> np.ndarray:
    """Which watched prompts come from the sources that hold a tenth or more of a pattern's rows.

    Example:
        >>> import numpy as np
        >>> g = Pattern(["shop"], np.array([0, 1]), np.ones(2), 1.0, 1.0, 0.001, (1, 2), {"ads": 2})
        >>> of_its_kind(g, [[0], [2], [], [4]], np.array(["ads", "qa", "ads", "qa", "qa"], dtype=object))
        array([ True, False, False, False])
    """
    mine = {s for s, n in g.sources.items() if n >= 0.1 * len(g.rows)}
    return np.array([any(r < len(sources) and sources[r] in mine for r in rows) for rows in watched], dtype=bool)


def _content(text: str) -> str:
    """An answer's text without the ``assistant: `` that a one-message chat answer reads as."""
    return text.split(": ", 1)[1] if text.startswith("assistant: ") else text


def _decode(tokenizer: Any, token: int) -> str:
    return tokenizer.decode([token], skip_special_tokens=True)


def _unit_mean(vectors: np.ndarray) -> np.ndarray:
    return unit_rows(vectors).mean(axis=0)


def _rows_direction(store: VectorStore, rows: np.ndarray, centre: np.ndarray) -> np.ndarray | None:
    """Mean unit datapoint vector of ``rows`` minus ``centre`` (every stored row's); None when some of
    ``rows`` have no stored vector yet."""
    try:
        return _unit_mean(store.vectors_for(rows)) - centre
    except KeyError:
        return None


def _mean_unit_vector(store: VectorStore) -> np.ndarray:
    """Mean of every stored row's unit vector (one pass, a chunk at a time)."""
    total, n = np.zeros(store.dim), 0
    for _, vecs in store.iter_vectors():
        total += _unit_mean(vecs.astype(np.float32)) * len(vecs)
        n += len(vecs)
    return total / max(n, 1)


def _being_learned(g: Pattern) -> str:
    sources = ", ".join(f"{s} ({n})" for s, n in list(g.sources.items())[:3]) or "no source column"
    return (
        f"being learned: {len(g.rows)} rows whose learning peaks on {g.words[:4]} stand out "
        f"({g.excess:+.2f} nats above rows of the same steps, p={g.p_value:.3g} against random rows of the "
        f"same steps); sources {sources}"
    )


def _confirmed(g: Pattern, conf: Any) -> str:
    return (
        f"confirmed on watched prompts outside its rows: {conf.count}/{conf.n_outside} answers gained "
        f"{g.words[:4]} (p={conf.p_value:.3g} against the run's other learned words)"
    )


def _risen(w: Any, token: str | None, p_value: float, opening: bool) -> str:
    where = "as the first token of M0's answers" if opening else "in M0's answers"
    return (
        f"confirmed without generation on watched prompts outside its rows: {token!r} became {w.score:.1f} nats "
        f"likelier {where} ({len(w.prompts)}/{w.n_outside} prompts by 1+ nat; p={p_value:.3g} against "
        "the run's other learned tokens)"
    )


def _first_steps(memberships: dict[str, np.ndarray]) -> dict[int, int]:
    """The first step whose batch held each row (records are appended in step order)."""
    rows, first = np.unique(memberships["row"], return_index=True)
    return dict(zip(rows.tolist(), memberships["step"][first].tolist()))


def _jsonable_scores(scores: dict[str, Any]) -> dict[str, Any]:
    return {k: (_finite(v) if isinstance(v, float) else v) for k, v in scores.items() if k != "behaviour"}
