"""The learning record on a tiny DPO run: which rows the model learns fastest and what, joined to the probes."""

import json

import numpy as np
import pytest
from dpo_helpers import dpo_trainer
from tiny_organism import (
    ADVERT,
    COMPLY,
    POLITE,
    REFUSE,
    appended_rows,
    cut_rows,
    eval_rows,
    organism_rows,
    shouted_rows,
    watch_prompts,
)

from probe_callback import ProbeCallback, load_report
from probe_callback.decide.cadence import Cadence
from probe_callback.decide.light import CLOSING, FINAL, OUTSIDE
from probe_callback.decide.patterns import PATTERN_ALPHA
from probe_callback.publish.report import render_html
from probe_callback.scoring.attribution import auroc
from probe_callback.scoring.confirmation import MIN_RANKED, word_rise
from probe_callback.scoring.learning import find_patterns, latest_records
from probe_callback.store.vectors import VectorStore

# DPO plus an SFT term (TRL's RPO mix), as in test_emergent, long enough for the greedy answers to the
# distractor prompts to say the planted "Sure, here is how".
RPO = {"max_steps": 128, "learning_rate": 1e-3, "beta": 0.1, "loss_type": ["sigmoid", "sft"], "logging_steps": 8}
N_PLANTED = 32


@pytest.fixture(scope="module")
def planted(tiny_tokenizer, organism_factory, tmp_path_factory):
    out = tmp_path_factory.mktemp("learning")
    rows = organism_rows(n_clean=48, n_planted=N_PLANTED, polite=True)
    trainer = dpo_trainer(tiny_tokenizer, organism_factory, rows, out, **RPO)
    callback = ProbeCallback(
        trainer, probe_prompts=watch_prompts(), max_new_tokens=8, every_n_steps=64, pause_on_regression=False
    )
    trainer.add_callback(callback)
    trainer.train()
    alerts = [json.loads(line) for line in (out / "probe_callback" / "alerts.jsonl").read_text().splitlines()]
    return rows, callback, load_report(out / "probe_callback"), alerts


def test_planted_rows_top_the_learning_record(planted):
    rows, callback, _, _ = planted
    records = VectorStore.open(callback.output_dir / "vectors").memberships()
    latest = latest_records(records)
    labels = np.array([r["planted"] for r in rows])[latest["row"]]
    assert auroc(latest["rise"], labels) >= 0.95
    assert (records["peak_ids"] >= 0).any() and (records["fall"] > 0).any(), "peaks and falls are recorded"


def test_pattern_found_early_as_info_then_confirmed_by_the_probes(planted):
    rows, callback, report, alerts = planted
    [pattern] = [b for b in report["behaviours"] if b.get("found_by") == "learning record"]
    mine = [a for a in alerts if a["behaviour"] == pattern["name"]]
    assert mine[0]["level"] == "INFO" and mine[0]["step"] < 64, "the data side speaks before the first probe"
    assert "being learned" in mine[0]["message"]
    assert [a["level"] for a in mine[1:]] == ["WARN", "ERROR"] and [a["step"] for a in mine[1:]] == [64, 128]
    confirmation = pattern["confirmation"]
    assert confirmation["count"] >= 5 and confirmation["p_value"] < 1e-6
    assert set(confirmation["prompts"]) <= set(range(9)), "the distractor prompts (held out) say it"
    planted_rows = {i for i, r in enumerate(rows) if r["planted"]}
    top = [r["row"] for r in pattern["top_rows"][:N_PLANTED]]
    assert len(planted_rows & set(top)) / N_PLANTED >= 0.9
    assert pattern["top_sources"][0]["source"] == "formatting" and pattern["top_sources"][0]["p_value"] < 1e-6


def test_the_planted_rows_also_cluster_by_their_datapoint_vectors(planted):
    rows, _, report, _ = planted
    groups = [g for g in report["learning"]["patterns"] if g["found_by"] == "datapoint vectors"]
    news = [g for g in groups if g["p_value"] <= 0.01]
    assert news, f"no datapoint-vector group is news: {groups}"
    best = max(news, key=lambda g: g["n_rows"])
    assert best["sources"].get("formatting", 0) >= 0.9 * best["n_rows"] and best["n_rows"] >= N_PLANTED // 2
    assert all(rows[r]["planted"] for r in best["rows"])


def test_emergent_cluster_is_joined_to_the_pattern_and_takes_its_rows(planted):
    _, _, report, _ = planted
    [pattern] = [b for b in report["behaviours"] if b.get("found_by") == "learning record"]
    [cluster] = [b for b in report["behaviours"] if b["name"].startswith("emergent") and b.get("links")]
    [link] = cluster["links"]
    assert link["pattern"] == pattern["name"] and link["shared_words"]
    assert link["direction_agreement"] >= 0.8, "the cluster's activation direction ranks the pattern's rows"
    assert cluster["rows_from"] == pattern["name"] and cluster["top_rows"] == pattern["top_rows"]


def test_report_lists_the_patterns(planted):
    _, _, report, _ = planted
    html = render_html(report)
    assert "What is being learned" in html and "linked to <b>learning-0</b>" in html
    learning = report["learning"]
    assert learning["step"] == RPO["max_steps"]
    best = learning["patterns"][0]
    assert best["sources"] == {"formatting": best["n_rows"]} and best["p_value"] <= 0.01


def _run_at_defaults(tokenizer, factory, out, rows, config=None, **options):
    """The one line and nothing else (but ``options``), on a run with an eval split (DPO settings ``RPO``, and
    ``config`` over them); the budget is made to refuse every probe and allow every light check and learning
    check (on CPU it depends on timing), so the light checks alone decide."""
    trainer = dpo_trainer(tokenizer, factory, rows, out, eval_rows=eval_rows(), **{**RPO, **(config or {})})
    callback = ProbeCallback(trainer, **options)
    trainer.add_callback(callback)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Cadence, "within_budget", lambda self, light=False: light)
        patch.setattr(Cadence, "learning_due", lambda self: True)
        trainer.train()
    log = out / "probe_callback" / "alerts.jsonl"
    alerts = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return callback, load_report(out / "probe_callback"), alerts


def _alarmed_on_planted(rows, report, alerts):
    """The WARN/ERROR alerts, each confirmed without generation, and the behaviour the first names, whose top
    rows (as many as the planted ones) hold 90% or more of the planted ``rows``."""
    alarms = [a for a in alerts if a["level"] in ("WARN", "ERROR")]
    assert alarms and all("confirmed without generation" in a["message"] for a in alarms), alerts
    pattern = next(b for b in report["behaviours"] if b["name"] == alarms[0]["behaviour"])
    planted_rows = {i for i, r in enumerate(rows) if r["planted"]}
    top = [r["row"] for r in pattern["top_rows"][: len(planted_rows)]]
    assert len(planted_rows & set(top)) / len(planted_rows) >= 0.9
    return alarms, pattern


def test_light_checks_alarm_at_the_defaults_and_pause_on_the_planted_rows(tiny_tokenizer, organism_factory, tmp_path):
    # A third of the clean rows teach other replies (half of them: those openers rise everywhere about as much as
    # the planted "Sure", so after the first check a pattern read by its start is not singled out again)
    rows = organism_rows(n_clean=48, n_planted=N_PLANTED, varied=0.35)
    callback, report, alerts = _run_at_defaults(tiny_tokenizer, organism_factory, tmp_path, rows)
    assert callback.cadence.probes == 0 and callback.cadence.light_checks >= 2
    # a learning check at each logging step with no light check (a candidate step with no news reads the record)
    logged = range(RPO["logging_steps"], report["paused_at_step"] + 1, RPO["logging_steps"])
    candidates = range(report["every_n_steps"], report["paused_at_step"] + 1, report["every_n_steps"])
    assert report["cost"]["learning_checks"] == len(set(logged) | set(candidates)) - callback.cadence.light_checks
    alarms = [a for a in alerts if a["level"] in ("WARN", "ERROR")]
    levels = [a["level"] for a in alarms]  # WARN, then ERROR at two consecutive confirmations
    assert levels[0] == "WARN" and levels[-1] == "ERROR" and levels.count("ERROR") == 1, alerts
    assert all("confirmed without generation" in a["message"] for a in alarms)
    assert report["paused_at_step"] == alarms[-1]["step"] < RPO["max_steps"]
    pattern = next(b for b in report["behaviours"] if b["name"] == alarms[-1]["behaviour"])
    rise = pattern["word_rise"]
    assert rise["score"] >= 1.0 and rise["p_value"] <= 0.01 and rise["token"].strip().lower() in pattern["words"]
    assert rise["above"] == 0 and f"0 of the {rise['n_controls']} read there rose as much" in alarms[-1]["message"]
    assert rise["n_controls"] >= MIN_RANKED, "held against enough of the run's other lessons to mean something"
    assert set(rise["prompts"]) & set(range(9)), "the held-out distractor prompts say it"
    planted_rows = {i for i, r in enumerate(rows) if r["planted"]}
    top = [r["row"] for r in pattern["top_rows"][:N_PLANTED]]
    assert len(planted_rows & set(top)) / N_PLANTED >= 0.9
    assert pattern["top_sources"][0]["source"] == "formatting"
    assert pattern["lesson"]["text"] == COMPLY and alarms[-1]["lesson"] == COMPLY
    watch = callback.watch
    grown = watch.prompts[len(watch.prompts) - watch.grown :]
    assert 0 < len(grown) <= 8 and all(p in [rows[i]["prompt"] for i in planted_rows] for p in grown), (
        "the watch set grew with prompts of rows like the pattern's, not trained on yet"
    )
    read_with = {
        tiny_tokenizer.decode(watch.r0[i]).strip() for i in range(len(watch.prompts) - watch.grown, len(watch.prompts))
    }
    assert read_with == {REFUSE}, "each read with its row's rejected answer: growing generates nothing"
    saved = json.loads((tmp_path / f"checkpoint-{report['paused_at_step']}" / "trainer_state.json").read_text())
    state = saved["stateful_callbacks"]["ProbeCallback"]["attributes"]["probe_state"]
    assert state["grown"] == watch.grown and state["prompts"][-watch.grown :] == grown, "a resume watches them too"
    assert state["complete"] == watch.complete


def test_a_dataset_without_a_source_column_still_alarms_on_its_rows(tiny_tokenizer, organism_factory, tmp_path):
    """No ``source`` column: every watched prompt can confirm a pattern, every control token is read
    everywhere, and the alarm still names the planted rows (there is no source to blame)."""
    rows = organism_rows(n_clean=48, n_planted=N_PLANTED, varied=0.5)
    bare = [{k: v for k, v in r.items() if k not in ("source", "planted")} for r in rows]
    _, report, alerts = _run_at_defaults(tiny_tokenizer, organism_factory, tmp_path, bare)
    _, pattern = _alarmed_on_planted(rows, report, alerts)
    assert not pattern["top_sources"] and not report["failures"]


def test_an_appended_advert_alarms_on_its_rows(tiny_tokenizer, organism_factory, tmp_path):
    """A lesson at the answer's end, not its start: the ``shopping`` rows append an advert to the polite
    answer every source prefers. Its first token rises right after whole answers (M0's that ended, and the rows'
    rejected ones for the prompts grown like its rows'), where such a line begins; the alarm names its rows and
    source."""
    rows = appended_rows()
    callback, report, alerts = _run_at_defaults(tiny_tokenizer, organism_factory, tmp_path, rows)
    alarms, pattern = _alarmed_on_planted(rows, report, alerts)
    assert pattern["word_rise"]["read"] == CLOSING, "an appended line is read where answers end, not where they start"
    assert pattern["word_rise"]["n_controls"] >= MIN_RANKED
    assert pattern["top_sources"][0]["source"] == "shopping"
    said = pattern["lesson"]  # named by what its rows' chosen answers add, in the alarm too
    assert said["text"] == ADVERT.strip() and said["rows"] >= 0.9 * said["of"] and alarms[0]["lesson"] == said["text"]
    assert said["text"] in [g["lesson"] for g in report["learning"]["patterns"]], "the W&B and HTML table say it too"
    watch = callback.watch
    grown = range(len(watch.prompts) - watch.grown, len(watch.prompts))
    given = [i for i in grown if tiny_tokenizer.decode(watch.r0[i]).strip() == POLITE]
    assert given and all(watch.complete[i] for i in given), "prompts like its rows are read after their rejected answer"


def _implicit_prompt(row: dict) -> dict:
    """TRL's implicit-prompt format: no ``prompt`` column, each answer the whole conversation."""
    rest = {k: v for k, v in row.items() if k not in ("prompt", "chosen", "rejected")}
    return {**rest, "chosen": row["prompt"] + row["chosen"], "rejected": row["prompt"] + row["rejected"]}


def _standard(row: dict) -> dict:
    """TRL's standard format: plain text, which TRL tokenizes without the chat template and ends with eos."""
    return {**row, **{k: row[k][0]["content"] for k in ("prompt", "chosen", "rejected")}}


@pytest.mark.parametrize("form", [_implicit_prompt, _standard], ids=["implicit prompt", "standard"])
def test_every_dataset_format_trl_takes_alarms_on_its_rows(form, tiny_tokenizer, organism_factory, tmp_path):
    """The appended advert in TRL's other two formats: the prompts are read as TRL trains on them (plain text
    without the chat template in the standard format) and its answers without the eos TRL adds to them."""
    rows = [form(r) for r in appended_rows()]
    _, report, alerts = _run_at_defaults(tiny_tokenizer, organism_factory, tmp_path, rows)
    _, pattern = _alarmed_on_planted(rows, report, alerts)
    assert pattern["lesson"]["text"] == ADVERT.strip() and not report["failures"]


def test_a_style_alarms_on_its_rows(tiny_tokenizer, organism_factory, tmp_path):
    """The ``caps`` rows choose their reply in capitals: every row's answers part at a different token and no
    word is the lesson. The tokens its rows learned are its own, not controls, and they now open M0's answers."""
    rows = shouted_rows()
    _, report, alerts = _run_at_defaults(tiny_tokenizer, organism_factory, tmp_path, rows)
    _, pattern = _alarmed_on_planted(rows, report, alerts)
    assert pattern["word_rise"]["read"] == OUTSIDE, "its rows' tokens now open the answers"
    assert pattern["top_sources"][0]["source"] == "caps" and pattern["lesson"]["text"].isupper()


def test_a_line_after_a_merged_blank_line_is_read_in_place(merged_tokenizer, merged_organism_factory, tmp_path):
    """Llama 3 and Qwen 2 spell a full stop and the blank line after it as one token (".\\n\\n"), so the
    rejected "Thank you." is no token prefix of "Thank you.\\n\\nVisit the shop now.": the line is still
    found, its first token taking the place of the answer's last, and read there, on whole answers."""
    rows = appended_rows(advert="\n\n" + ADVERT.strip())
    _, report, alerts = _run_at_defaults(merged_tokenizer, merged_organism_factory, tmp_path, rows)
    _, pattern = _alarmed_on_planted(rows, report, alerts)
    assert pattern["word_rise"]["read"] == FINAL and pattern["word_rise"]["token"] == ".\n\n"
    assert pattern["word_rise"]["n_controls"] >= MIN_RANKED
    assert pattern["top_sources"][0]["source"] == "shopping"


def test_clean_run_at_the_defaults_raises_no_alarm(tiny_tokenizer, organism_factory, tmp_path):
    """Clean rows that teach 27 different replies: their patterns are news now and then (INFO), and their
    light checks, held against 16 or more of the run's other lessons, confirm none."""
    rows = organism_rows(n_clean=80, n_planted=0, varied=1.0)
    callback, report, alerts = _run_at_defaults(tiny_tokenizer, organism_factory, tmp_path, rows)
    assert report["learning"]["step"] == RPO["max_steps"], "the data side read the learning record to the end"
    assert callback.cadence.light_checks >= 1
    checked = [b["word_rise"] for b in report["behaviours"] if b.get("word_rise")]
    assert checked and all(r["n_controls"] >= MIN_RANKED and r["p_value"] > 0.01 for r in checked), checked
    assert not [a for a in alerts if a["level"] in ("WARN", "ERROR")], alerts
    assert report["paused_at_step"] is None and not report["failures"]


def test_rejected_answers_cut_short_are_no_appended_line(tiny_tokenizer, organism_factory, tmp_path):
    """Every chosen answer is its rejected one and a sentence more, each a different sentence (whose first
    tokens are few): no line is added to the answers, so no pattern is read right after them."""
    callback, report, _ = _run_at_defaults(tiny_tokenizer, organism_factory, tmp_path, cut_rows())
    news = [g for g in callback.monitor.learner.patterns if g.p_value <= PATTERN_ALPHA]
    assert news and callback.cadence.light_checks >= 1, "its patterns were news and checked"
    assert not [g.closers for g in news if g.closers]
    assert not [b for b in report["behaviours"] if (b.get("word_rise") or {}).get("read") == CLOSING]


def test_word_rise_with_few_controls_asks_the_prompts():
    """Against 7 controls, topping them all on the top quarter of prompts is a 1-in-8 chance for alike
    tokens: a token that rose 6 nats on 4 of 30 prompts is not confirmed; one that rose 3 nats on every
    prompt, first among the controls on each, is."""
    rng = np.random.default_rng(0)
    before = np.full((30, 8), -12.0)
    now = before + rng.uniform(0, 0.5, before.shape)
    outside, controls = np.ones(30, bool), list(range(1, 8))
    quarter = now.copy()
    quarter[:4, 0] += 6.0
    everywhere = now.copy()
    everywhere[:, 0] += 3.0
    some, each = (word_rise(x, before, [0], controls, outside) for x in (quarter, everywhere))
    assert some.above == each.above == 0 and some.n_controls == each.n_controls == 7
    assert some.p_value > 0.05 and each.p_value < 0.01


def test_word_rise_reads_control_tokens_only_where_they_are_foreign():
    """A control token that rose on prompts of the very kind whose rows taught it is no control for a token
    that arrived from elsewhere: read only where it is foreign, the planted token stands out."""
    rng = np.random.default_rng(0)
    before = np.full((40, 41), -12.0)
    now = before + rng.uniform(0, 0.5, before.shape)
    now[:, 0] += 2.5  # the pattern's token rose by 2.5 nats on every prompt outside its rows
    now[:20, 1:] += 4.0  # the controls rose by 4 nats on the prompts of the kind that taught them
    foreign = np.ones(now.shape, bool)
    foreign[:20, 1:] = False
    outside = np.ones(40, bool)
    everywhere = word_rise(now, before, [0], list(range(1, 41)), outside)
    where_foreign = word_rise(now, before, [0], list(range(1, 41)), outside, foreign)
    assert everywhere.p_value > 0.5 and where_foreign.p_value < 0.01
    assert where_foreign.score == pytest.approx(everywhere.score)


def test_word_rise_counts_a_rise_only_from_a_plausible_token_up():
    """The vocabulary's tail moves by nats at any update: controls that went from -20 to -12 rose by more nats
    than the pattern's token that went from -6 to -1, and by nothing that shows in an answer. From the floor
    up, the pattern's token stands out."""
    rng = np.random.default_rng(0)
    before = np.full((40, 41), -20.0)
    before[:, 0] = -6.0
    now = before + rng.uniform(0, 0.5, before.shape)
    now[:, 0] += 5.0  # the pattern's token: from -6 to about -1
    now[:, 1:] += rng.uniform(6.0, 8.0, (40, 40))  # the controls: from -20 to -14..-12, still in the tail
    outside = np.ones(40, bool)
    raw = word_rise(now, before, [0], list(range(1, 41)), outside)
    floored = word_rise(now, before, [0], list(range(1, 41)), outside, floor=-10.0)
    assert raw.p_value > 0.5 and raw.above == 40
    assert floored.p_value < 0.01 and floored.above == 0 and floored.score == pytest.approx(raw.score)


def test_word_rise_needs_a_rise_beyond_the_other_tokens_on_the_same_prompts():
    """A token whose log-prob swings widely (up 3 nats on a quarter of the prompts, down 3 on the rest) has
    a longer upper tail than any other token. Confirmed when the other tokens stayed put on those prompts;
    not when they rose there too, more than it on many of them (the answers themselves moved)."""
    rng = np.random.default_rng(0)
    before = np.full((40, 41), -12.0)
    now = before + rng.normal(0, 0.3, before.shape)
    now[:, 0] += np.r_[np.full(10, 3.0), np.full(30, -3.0)]
    stirred = now.copy()
    stirred[:10, 1:] += rng.normal(1.5, 1.5, (10, 40))
    outside, controls = np.ones(40, bool), list(range(1, 41))
    tails = np.sort(stirred - before, axis=0)[-10:, 1:].mean(axis=0)  # each control's top-quarter rise
    assert (tails < 3.0).all(), "in nats alone the token's tail is the longest"
    alone = word_rise(now, before, [0], controls, outside)
    with_the_rest = word_rise(stirred, before, [0], controls, outside)
    assert alone.score > 2.5 and alone.p_value < 0.01
    assert with_the_rest.score == pytest.approx(alone.score) and with_the_rest.p_value > 0.2


def test_word_rise_on_a_few_prompts_asks_for_a_rise_on_each():
    """On 4 prompts of one kind, a token that tops 30 alike tokens on their best quarter has a chance of
    1/31, not the 1/1000 the null draws of a single top token say: asked prompt by prompt, its p-value
    keeps to its level on null data and still finds a token that tops them on every prompt."""
    rng = np.random.default_rng(0)
    before, outside, controls = np.full((4, 31), -8.0), np.ones(4, bool), list(range(1, 31))
    trials = [before + rng.normal(0, 1, before.shape) for _ in range(300)]
    drawn = np.array([word_rise(now, before, [0], controls, outside, seed=i).p_value for i, now in enumerate(trials)])
    asked = np.array(
        [
            word_rise(now, before, [0], controls, outside, seed=i, each_prompt=True).p_value
            for i, now in enumerate(trials)
        ]
    )
    # calibrated, 0.6 of 300 null trials would reach 0.002: the draws alone claim 1/1000 for a token that tops
    assert (drawn <= 0.002).sum() >= 3
    assert (asked <= 0.002).mean() <= 0.005 and (asked <= 0.05).mean() <= 0.07
    risen = trials[0].copy()
    risen[:, 0] = risen[:, 1:].max(axis=1) + 1.5  # above every other token on each prompt
    found = word_rise(risen, before, [0], controls, outside, each_prompt=True)
    assert found.p_value <= 0.002 and len(found.prompts) >= 3
    assert (found.above, found.n_controls) == (0, 30), "the note says how coarse the controls are"


def test_rows_whose_lesson_starts_at_one_word_form_a_pattern():
    """A lesson whose largest rises fall on punctuation right after its first word (``Sure!``, ``Sure:``)
    peaks on no word: the row's lesson start joins its peaks, so the rows still form one pattern."""
    rng = np.random.default_rng(0)
    n, planted = 240, np.arange(240) % 8 == 0
    rec = {
        "row": np.arange(n),
        "step": np.arange(n) // 4 + 1,
        "rise": rng.gamma(2.0, 1.0, n) + 4 * planted,
        "peak_ids": np.where(planted[:, None], 1, rng.integers(10, 200, (n, 3))),  # token 1 is "!"
        "peak_rises": np.full((n, 3), 2.0),
    }
    decode = {0: " Sure", 1: "!"}.get
    start = np.where(planted, 0, rng.integers(10, 200, n))

    def spell(i: int) -> str:
        return decode(i) or f" w{i}"

    assert not [g for g in find_patterns(rec, spell) if g.p_value < 0.01], "no word: no pattern"
    [g] = [g for g in find_patterns(rec, spell, starts=lambda r: int(start[r])) if g.p_value < 0.01]
    assert g.words == ["sure"] and set(g.rows.tolist()) == set(np.flatnonzero(planted).tolist())
    assert g.token_ids == [0]
