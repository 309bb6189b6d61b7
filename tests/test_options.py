"""Attach-time validation: every bad option is refused at ProbeCallback(...) with a message naming it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from dpo_helpers import dpo_trainer, preference_rows

from probe_callback import Behaviour, ProbeCallback, ProbeOptions
from probe_callback.attach import watched_prompts

PROMPTS = ["hello there", "tell me a story", "what is a cat", "name a colour"]
PAIRS = [("q", "yes"), ("q", "sure")], [("q", "no"), ("q", "nope")]


@pytest.fixture(scope="module")
def trainer(tiny_tokenizer, tiny_model_factory, tmp_path_factory):
    return dpo_trainer(tiny_tokenizer, tiny_model_factory, preference_rows(8), tmp_path_factory.mktemp("run"))


BAD_OPTIONS = [
    # accepted before, refused now
    ({"probe_prompts": "abc"}, TypeError, "probe_prompts must be a list"),
    ({"pause_on_regression": "no"}, TypeError, "pause_on_regression='no' must be True or False"),
    ({"layers": [1.7]}, TypeError, r"layers=\[1.7\] must be a list of integer"),
    ({"every_n_steps": True}, TypeError, "every_n_steps=True must be an integer"),
    ({"policy": {"overrides": {"typo": {"patience": 3}}}}, ValueError, r"policy\['overrides'\] names 'typo'"),
    ({"probe_prompts": [*PROMPTS[:3], [{"role": "user"}]]}, ValueError, "'role' and 'content'"),
    ({"probe_prompts": [*PROMPTS[:3], [{"content": "hi"}]]}, ValueError, r"probe_prompts\[3\]\[0\]"),
    ({"policy": {"patience": 0}}, ValueError, r"policy\['patience'\]=0 must be an integer >= 1"),
    ({"policy": {"patiense": 3}}, ValueError, r"policy has unknown keys \['patiense'\]"),
    ({"projection_dim": 5000}, ValueError, "projection_dim=5000 is larger than the model's hidden size 32"),
    ({"probe_prompts": PROMPTS[:3]}, ValueError, "probe_prompts has 3 prompt.*at least 4"),
    ({"n_probe_prompts": 3}, ValueError, "n_probe_prompts=3 must be an integer >= 4"),
    ({"max_new_tokens": 100000}, ValueError, "max_new_tokens=100000 .* context of 256 tokens"),
    ({"judge": lambda p, r: True}, TypeError, r"unknown ProbeCallback option\(s\) \['judge'\]"),
    # failed only at train() before
    ({"layers": []}, ValueError, r"layers=\[\] is empty"),
    ({"policy": "strict"}, TypeError, "policy='strict' must be a dict"),
    ({"policy": {"overrides": None}}, TypeError, r"policy\[.overrides.\] must map a behaviour name"),
    ({"probe_prompts": [*PROMPTS[:3], None]}, TypeError, r"probe_prompts\[3\] is None"),
    ({"probe_prompts": [*PROMPTS[:3], 7]}, TypeError, r"probe_prompts\[3\] is 7"),
    ({"probe_prompts": [*PROMPTS[:3], "bad \ud800"]}, ValueError, r"probe_prompts\[3\] holds '\\ud800'"),
    # bare TypeErrors before
    ({"probe_budget": "0.1"}, TypeError, "probe_budget='0.1' must be a number"),
    ({"output_dir": 123}, TypeError, "output_dir=123 must be a folder path"),
    ({"layers": 2}, TypeError, "layers=2 must be a list"),
    ({"n_probe_prompts": "5"}, TypeError, "n_probe_prompts='5' must be an integer"),
    ({"behaviours": Behaviour("b", *PAIRS)}, TypeError, r"behaviours must be a list .*behaviours=\[b\]"),
    ({"seed": -1}, ValueError, "seed=-1 must be an integer >= 0"),
    ({"id_column": None}, TypeError, "id_column=None must be the name of a dataset column"),
]


@pytest.mark.parametrize(("options", "error", "message"), BAD_OPTIONS, ids=[repr(o)[:40] for o, _, _ in BAD_OPTIONS])
def test_bad_option_is_refused_at_attach(trainer, options, error, message):
    with pytest.raises(error, match=message):
        ProbeCallback(trainer, **options)


def test_good_options_attach(trainer, tmp_path):
    overrides = {"b": {"patience": 3}, "emergent-2": {"max_p_value": 0.05}}
    cb = ProbeCallback(
        trainer,
        probe_prompts=[*PROMPTS[:3], [{"role": "user", "content": "hi"}]],
        behaviours=[Behaviour("b", *PAIRS)],
        policy={"patience": 2, "overrides": overrides},
        projection_dim=32,
        output_dir=tmp_path / "out",
    )
    assert cb.options.policy["overrides"] == overrides and cb.output_dir == tmp_path / "out"


def test_options_object_positional_keyword_and_overridden(trainer):
    options = ProbeOptions(probe_prompts=PROMPTS, every_n_steps=3)
    assert ProbeCallback(trainer, options).options == options
    assert ProbeCallback(trainer, options=options).options == options
    assert ProbeCallback(trainer, options, every_n_steps=5).options.every_n_steps == 5
    with pytest.raises(TypeError, match="takes a probe_callback.ProbeOptions, got dict"):
        ProbeCallback(trainer, {"every_n_steps": 3})
    with pytest.raises(TypeError, match="valid options .*probe_prompts, behaviours, every_n_steps"):
        ProbeCallback(trainer, every_n_step=3)


def test_behaviour_threshold_and_text_are_checked():
    with pytest.raises(TypeError, match=r"Behaviour 'b': threshold='0.1' must be a number"):
        Behaviour("b", *PAIRS, threshold="0.1")
    with pytest.raises(ValueError, match=r"Behaviour 'b': negative\[1\] holds '\\udfff'"):
        Behaviour("b", PAIRS[0], [("q", "no"), ("q", "\udfff")])


def test_behaviour_longer_than_the_model_context(trainer):
    """DPOConfig.max_length is 1024, the model has 256 positions: the smaller one decides."""
    assert trainer.args.max_length > 256
    long = Behaviour("long", [("q", "cat " * 300), ("q", "a b")], PAIRS[1])
    with pytest.raises(ValueError, match=r"Behaviour 'long': positive\[0\] .* exceed the model context of 256"):
        ProbeCallback(trainer, behaviours=[long])


def test_streaming_dataset_is_refused(trainer):
    dataset = trainer.train_dataset
    trainer.train_dataset = dataset.to_iterable_dataset()
    try:
        with pytest.raises(ValueError, match="map-style datasets.Dataset .*got IterableDataset"):
            ProbeCallback(trainer)
    finally:
        trainer.train_dataset = dataset


def test_output_dir_must_be_a_writable_folder(trainer, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    for path in (tmp_path / "file", tmp_path / "file" / "below"):
        with pytest.raises(ValueError, match="an existing file: give a folder path"):
            ProbeCallback(trainer, output_dir=path)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() == 0:  # root may write anywhere: play an ordinary user
        access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked and access(p, mode))
    with pytest.raises(ValueError, match="is not writable"):
        ProbeCallback(trainer, output_dir=locked / "out")


def _rows_with_prompts(prompts: list[str], n: int) -> list[dict[str, str]]:
    rows = preference_rows(n)
    for i, row in enumerate(rows):
        row["prompt"] = prompts[i % len(prompts)]
    return rows


def test_default_sampling_needs_four_unique_prompts(tiny_tokenizer, tiny_model_factory, tmp_path):
    rows = _rows_with_prompts(["tell me about the cat", "tell me about the dog", "a bird"], 8)
    trainer = dpo_trainer(tiny_tokenizer, tiny_model_factory, rows, tmp_path / "few")
    with pytest.raises(ValueError, match=r"only 3 unique prompt\(s\) .* Pass probe_prompts=\[...\] with at least 4"):
        ProbeCallback(trainer)
    ProbeCallback(trainer, probe_prompts=PROMPTS)  # the fix the message names


def test_a_small_eval_split_is_topped_up_with_train_prompts(tiny_tokenizer, tiny_model_factory, tmp_path):
    eval_rows = _rows_with_prompts(["held out one", "held out two"], 2)
    trainer = dpo_trainer(tiny_tokenizer, tiny_model_factory, preference_rows(8), tmp_path / "r", eval_rows=eval_rows)
    watched = watched_prompts(ProbeCallback(trainer).options, trainer)
    assert {"held out one", "held out two"} < set(watched) and len(watched) >= 4
    only_eval = _rows_with_prompts(["one", "two"], 4)
    few = _rows_with_prompts(["one", "two"], 4)
    trainer = dpo_trainer(tiny_tokenizer, tiny_model_factory, few, tmp_path / "f", eval_rows=only_eval)
    with pytest.raises(ValueError, match=r"eval and train data hold only 2 unique prompt"):
        ProbeCallback(trainer)
