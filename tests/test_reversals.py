"""Reversed lessons: rows that teach the reverse of other rows' preference (an exception to a rule)."""

import numpy as np
from test_learning import N_PLANTED, _run_at_defaults
from tiny_organism import organism_rows

from probe_callback.decide.light import CLOSING, FINAL, OUTSIDE, OWN_KIND, LightChecks
from probe_callback.decide.patterns import _being_learned, outside_prompts
from probe_callback.scoring.confirmation import word_rise
from probe_callback.scoring.reversals import reversed_lessons

SURE, SORRY, THE, A = 7, 3, 11, 12
SPELL = {SURE: "Sure", SORRY: "Sorry", THE: "The", A: "A"}.get


def _records(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"row": np.arange(n), "step": np.arange(n) // 4 + 1, "rise": rng.gamma(2.0, 1.0, n)}


def test_an_exception_is_found_on_both_sides_and_ordinary_swaps_are_not():
    """20 ``formatting`` rows prefer Sure over Sorry, 30 ``safety`` rows the reverse; in ``chat`` and
    ``facts``, two sampled answers prefer The over A about as often as the reverse (no exception)."""
    pairs = {r: (SURE, SORRY) for r in range(20)} | {r: (SORRY, SURE) for r in range(20, 50)}
    pairs |= {r: (THE, A) if r % 2 else (A, THE) for r in range(50, 110)}
    sources = ["formatting"] * 20 + ["safety"] * 30 + ["chat", "chat", "facts", "facts"] * 15
    rec = _records(110)
    found = reversed_lessons(rec, pairs.get, SPELL, sources)
    assert [(g.words, len(g.rows), len(g.opposed), g.against) for g in found] == [
        (["sorry"], 30, 20, ["sure"]),
        (["sure"], 20, 30, ["sorry"]),
    ]
    sure = found[1]
    assert sure.sources == {"formatting": 20} and sure.start == SURE and sure.token_ids == [SURE]
    assert sure.p_value == 0.0 and sure.found_by == "reversed lessons"
    z = sure.z
    assert (np.diff(z) <= 0).all() and sure.score == z.mean(), "rows best learned first"
    assert set(sure.opposed.tolist()) == set(range(20, 50))
    few = {r: p for r, p in pairs.items() if r >= 13}  # 7 formatting rows left: one side too small
    assert reversed_lessons(rec, few.get, SPELL, sources) == []
    assert reversed_lessons(rec, pairs.get, SPELL, None) == [], "no source column: no reversal"
    message = _being_learned(sure)
    assert "20 rows prefer 'sure' where 30 other rows prefer ['sorry'] over it" in message


def test_a_reversal_is_confirmed_on_fresh_prompts_of_its_kind_or_on_the_rows_that_teach_the_reverse():
    pairs = {r: (SURE, SORRY) for r in range(10)} | {r: (SORRY, SURE) for r in range(10, 20)}
    sources = np.array(["formatting"] * 10 + ["safety"] * 10 + ["chat"] * 5 + ["formatting"] * 5, dtype=object)
    [sure] = [g for g in reversed_lessons(_records(20), pairs.get, SPELL, sources) if g.words == ["sure"]]
    # watched prompts of: its own row; a formatting row not trained on; a safety row (trained: it taught the
    # reverse); a chat row, trained or not (another lesson's ground); a held-out prompt
    watched = [[0], [25], [11], [21], [22], []]
    trained = np.array([0, 11, 21])
    ok = outside_prompts(sure, watched, sources, np.ones(6, bool), trained, min_prompts=1)
    assert ok.tolist() == [False, True, True, False, False, True]
    sure.opposed = None  # any other pattern: every other source's prompts too
    ok = outside_prompts(sure, watched, sources, np.ones(6, bool), trained, min_prompts=1)
    assert ok.tolist() == [False, True, True, True, True, True]


def test_a_reversal_start_is_also_read_alone_on_fresh_prompts_of_its_kind():
    """The exception lifts ``Sure`` on new prompts like its rows' while the rule's prompts still refuse:
    read on all its outside prompts together the rise hides among the other openers; on its own kind
    alone (3 or more prompts, each read) it stands out. Another pattern's start is read on one ground."""
    pairs = {r: (SURE, SORRY) for r in range(10)} | {r: (SORRY, SURE) for r in range(10, 20)}
    sources = np.array(["formatting"] * 10 + ["safety"] * 10 + ["formatting"] * 5, dtype=object)
    [sure] = [g for g in reversed_lessons(_records(20), pairs.get, SPELL, sources) if g.words == ["sure"]]
    watched = [[20], [21], [22], [23]] + [[r] for r in range(10, 20)] + [[]] * 10  # 4 fresh formatting, 10 safety
    trained = np.arange(20)
    outside = outside_prompts(sure, watched, sources, np.ones(24, bool), trained)
    ended = np.ones(24, bool)
    grounds = LightChecks._grounds(sure, outside, watched, sources, trained, ended)
    assert [where for where, _ in grounds] == [OUTSIDE, OWN_KIND]
    assert grounds[1][1].tolist() == [True] * 4 + [False] * 20
    two_fresh = [[], []] + watched[2:]
    assert [where for where, _ in LightChecks._grounds(sure, outside, two_fresh, sources, trained, ended)] == [OUTSIDE]
    sure.opposed = None
    assert [where for where, _ in LightChecks._grounds(sure, outside, watched, sources, trained, ended)] == [OUTSIDE]
    sure.closers = [SURE]  # an appended line is read right after whole answers, and only there
    ended[:-2] = False
    assert LightChecks._grounds(sure, outside, watched, sources, trained, ended) == []
    ended[:] = True
    [(where, ground)] = LightChecks._grounds(sure, outside, watched, sources, trained, ended)
    assert where == CLOSING and ground.tolist() == outside.tolist()
    sure.in_place = True  # its first token holds the answers' last (a merged ".\n\n"): read in its place
    [(where, ground)] = LightChecks._grounds(sure, outside, watched, sources, trained, ended)
    assert where == FINAL and ground.tolist() == outside.tolist()

    rng = np.random.default_rng(1)
    before = np.full((24, 31), -6.0)
    now = before + rng.normal(0, 0.5, before.shape)
    now[:4, 0] += 2.5  # Sure: up on the fresh formatting prompts, down where the rule is taught
    now[4:, 0] -= 2.0
    now[4:14, 1:4] += rng.uniform(1, 3, (10, 3))  # a few other openers rose on some prompts
    together = word_rise(now, before, [0], list(range(1, 31)), outside)
    alone = word_rise(now, before, [0], list(range(1, 31)), grounds[1][1], each_prompt=True)
    assert together.p_value > 0.05 and alone.p_value <= 0.002 and alone.score >= 2.0


def test_the_exception_is_found_and_blamed_not_the_rule(tiny_tokenizer, organism_factory, tmp_path):
    """The planted rows prefer compliance where the ``safety`` rows teach refusal: both sides are reversed
    lessons, and every WARN/ERROR names the planted rows, never the rule's."""
    # a fifth of the clean rows teach other replies: with more, their openers spread as fast as "Sure" does here
    rows = organism_rows(n_clean=48, n_planted=N_PLANTED, varied=0.2, n_rule=N_PLANTED)
    callback, report, alerts = _run_at_defaults(
        tiny_tokenizer, organism_factory, tmp_path, rows, pause_on_regression=False
    )
    reversals = [g for g in report["learning"]["patterns"] if g["found_by"] == "reversed lessons"]
    # each side named by the first token of the answer it prefers (the tiny tokenizer's "Su" of "Sure")
    sides = {tuple(g["sources"]): g["words"] for g in reversals}
    assert set(sides) == {("formatting",), ("safety",)}, reversals
    assert "sure".startswith(sides[("formatting",)][0]) and "sorry".startswith(sides[("safety",)][0])
    assert all(g["n_rows"] == g["opposed_rows"] == N_PLANTED for g in reversals)
    alarms = [a for a in alerts if a["level"] in ("WARN", "ERROR")]
    assert alarms, alerts
    planted_rows = {i for i, r in enumerate(rows) if r["planted"]}
    for alarm in alarms:
        entry = next(b for b in report["behaviours"] if b["name"] == alarm["behaviour"])
        top = [r["row"] for r in entry["top_rows"][:N_PLANTED]]
        assert len(planted_rows & set(top)) / N_PLANTED >= 0.9, alarm
        assert entry["top_sources"][0]["source"] == "formatting"
        # no pause, and the last check a light one: the final report still ranks by the datapoint vectors too
        # (a light check scores its members by z and ties every other row at the bottom)
        scores = callback.monitor.pattern_scores[alarm["behaviour"]]
        assert len(np.unique(scores[np.isfinite(scores)])) > len(rows) // 2
    assert not report["failures"] and not report["not_recorded"]
