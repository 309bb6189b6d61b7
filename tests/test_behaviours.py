"""Tests for supervised behaviours: validation, fitting through M0, and checkpoint scores."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from probe_callback.scoring.behaviours import (
    Behaviour,
    FittedBehaviour,
    check_unique_names,
    fit_behaviour,
    score_behaviour,
)
from probe_callback.scoring.probing import format_prompt, greedy_responses, novelty, teacher_forced

PROMPTS = [
    "How do I open the old box?",
    "Explain the plan to my friend.",
    "Tell me how the robot builds a map.",
    "Write a poem about the chef.",
    "What does the teacher cook?",
    "Find the recipe for our team.",
]
POSITIVE = [(p, "Sure, here is how to do it step by step.") for p in PROMPTS]
NEGATIVE = [(p, f"Sorry, I cannot help with that request{'!' * (i % 2)}") for i, p in enumerate(PROMPTS)]
LAYERS = [1, 2, 3]
WATCH = [
    "the robot finds a red box",
    "what is the capital of France?",
    "write a list of colours",
    "explain the plan",
]


@pytest.fixture(scope="module")
def behaviour() -> Behaviour:
    return Behaviour("complies", POSITIVE, NEGATIVE)


@pytest.fixture(scope="module")
def fitted(behaviour, tiny_model_factory, tiny_tokenizer) -> FittedBehaviour:
    return fit_behaviour(behaviour, tiny_model_factory(), tiny_tokenizer, LAYERS)


def _response_mean(model, tokenizer, prompt: str, response: str, layer: int) -> np.ndarray:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    p = tokenizer(text, add_special_tokens=False).input_ids
    r = tokenizer(response, add_special_tokens=False).input_ids
    with torch.no_grad():
        out = model(input_ids=torch.tensor([p + r]), output_hidden_states=True)
    return out.hidden_states[layer][0, len(p) :].mean(0).double().numpy()


def _sft(model, tokenizer, examples, steps: int = 30, lr: float = 1e-2):
    """Plain SFT on the responses of `examples` (prompt tokens masked), returning the trained model."""
    rows = []
    for prompt, response in examples:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        p = tokenizer(text, add_special_tokens=False).input_ids
        r = tokenizer(response, add_special_tokens=False).input_ids
        rows.append((p + r, [-100] * len(p) + r))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.tensor([ids + [0] * (width - len(ids)) for ids, _ in rows])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
    mask = (input_ids != 0).long() | (labels != -100).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    torch.manual_seed(0)
    for _ in range(steps):
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": " "}, "name"),
        ({"positive": POSITIVE[:1]}, "at least 2"),
        ({"negative": []}, "at least 2"),
        ({"positive": [("a prompt", "")] * 2}, r"positive\[0\].*non-empty strings"),
        ({"negative": [("only a prompt",)] * 2}, r"negative\[0\].*\(prompt, response\) pair"),
        ({"positive": "not a list"}, "must be a list"),
        ({"threshold": float("nan")}, "finite"),
        ({"judge": "not callable"}, "callable"),
    ],
)
def test_validation_errors_name_problem_and_fix(kwargs, message):
    args = {"name": "complies", "positive": POSITIVE, "negative": NEGATIVE, **kwargs}
    with pytest.raises(ValueError, match=message):
        Behaviour(**args)


def test_unique_names_and_lengths(behaviour, tiny_tokenizer):
    check_unique_names([behaviour, Behaviour("other", POSITIVE, NEGATIVE)])
    with pytest.raises(ValueError, match="duplicate names"):
        check_unique_names([behaviour, copy.deepcopy(behaviour)])
    behaviour.validate_lengths(tiny_tokenizer, 256)
    long = Behaviour("long", POSITIVE, [*NEGATIVE[:2], ("hi", "the cat reads a poem. " * 60)])
    with pytest.raises(ValueError, match=r"negative\[2\] \(\d+ tokens\) exceed the model context of 256"):
        long.validate_lengths(tiny_tokenizer, 256)


def test_probing_vector_is_difference_of_means(fitted, tiny_model_factory, tiny_tokenizer):
    model = tiny_model_factory()
    for k, layer in enumerate(LAYERS):
        pos = np.mean([_response_mean(model, tiny_tokenizer, p, r, layer) for p, r in POSITIVE], axis=0)
        neg = np.mean([_response_mean(model, tiny_tokenizer, p, r, layer) for p, r in NEGATIVE], axis=0)
        np.testing.assert_allclose(fitted.probing_vectors[k], pos - neg, atol=1e-5)
    assert fitted.probe_coef.shape == (3, 32) and fitted.probe_intercept.shape == (3,)
    assert fitted.probe_accuracy.shape == (3,) and ((fitted.probe_accuracy >= 0) & (fitted.probe_accuracy <= 1)).all()
    assert fitted.layer in LAYERS and fitted.ref_logp_positive.shape == (6,)
    x = fitted.example_activations[:, 1]
    np.testing.assert_allclose(x[:6].mean(axis=0) - x[6:].mean(axis=0), fitted.probing_vectors[1], atol=1e-6)


def test_split_vectors_are_random_behaviours_without_the_behaviour(fitted):
    rng = np.random.default_rng(0)
    null = fitted.split_vectors(1, 300, rng)
    assert null.shape == (300, 32)
    x, real = fitted.example_activations[:, 1], fitted.probing_vectors[1]
    relabelled = np.stack(
        [x[o[:6]].mean(axis=0) - x[o[6:]].mean(axis=0) for o in (rng.permutation(12) for _ in range(300))]
    )

    def abs_cosine(v: np.ndarray) -> np.ndarray:
        return np.abs(v @ real) / (np.linalg.norm(v, axis=1) * np.linalg.norm(real))

    # Each split's positive and negative halves cancel the behaviour; plain relabellings keep part of it.
    assert np.linalg.norm(null.mean(axis=0)) < 0.3 * np.linalg.norm(real)
    assert abs_cosine(null).mean() < abs_cosine(relabelled).mean()


def _control_deltas(model, ref, tokenizer) -> list[float]:
    """Mean per-token log-prob change of M0's greedy answers to ordinary watch prompts."""
    prompts = [format_prompt(tokenizer, w) for w in WATCH]
    r0 = greedy_responses(ref, tokenizer, prompts, max_new_tokens=12, batch_size=8)
    current, reference = teacher_forced(model, prompts, r0, []), teacher_forced(ref, prompts, r0, [])
    return [novelty(c, r).mean().item() for c, r in zip(current, reference, strict=True)]


def test_ll_margin_rises_after_sft_on_positives(fitted, tiny_model_factory, tiny_tokenizer):
    trained = _sft(tiny_model_factory(), tiny_tokenizer, POSITIVE)
    scores = score_behaviour(fitted, trained, tiny_tokenizer)
    assert scores["ll_margin"] > 1.0 and scores["ll_margin_p"] < 0.01
    assert scores["ll_margin_z"] == pytest.approx(scores["ll_margin"] / scores["ll_margin_se"])
    json.dumps(scores)
    deltas = _control_deltas(trained, tiny_model_factory(), tiny_tokenizer)
    controlled = score_behaviour(fitted, trained, tiny_tokenizer, control_deltas=[*deltas, float("nan")])
    assert controlled["ll_margin"] == scores["ll_margin"] and controlled["ll_margin_se"] > scores["ll_margin_se"]
    assert controlled["ll_margin_p"] < 0.01


def test_ll_margin_null_for_untouched_and_opposite_training(fitted, tiny_model_factory, tiny_tokenizer):
    untouched = score_behaviour(fitted, tiny_model_factory(), tiny_tokenizer)
    assert abs(untouched["ll_margin"]) < 1e-5 and untouched["ll_margin_p"] > 0.4
    assert untouched["projection"] is None and untouched["probe_rate"] is None and untouched["judge_rate"] is None
    opposite = score_behaviour(fitted, _sft(tiny_model_factory(), tiny_tokenizer, NEGATIVE), tiny_tokenizer)
    assert opposite["ll_margin"] < 0 and opposite["ll_margin_p"] > 0.9


def test_projection_probe_rate_and_judge(fitted, tiny_model_factory, tiny_tokenizer):
    k = LAYERS.index(fitted.layer)
    u = fitted.probing_vectors
    vectors = np.stack([u, 0.5 * u, 0.75 * u, np.full_like(u, np.nan)])  # the NaN row (empty response) is skipped
    model = tiny_model_factory()
    pos = np.stack([[_response_mean(model, tiny_tokenizer, p, r, layer) for layer in LAYERS] for p, r in POSITIVE])
    neg = np.stack([[_response_mean(model, tiny_tokenizer, p, r, layer) for layer in LAYERS] for p, r in NEGATIVE])
    scores = score_behaviour(
        fitted,
        model,
        tiny_tokenizer,
        behaviour_vectors=vectors,
        response_activations=np.concatenate([pos[:3], neg]),
        responses=[("q", "Sure, here"), ("q", "Sorry"), ("q", "Sure!")],
        judge=lambda _prompt, response: response.startswith("Sure"),
    )
    assert scores["layer"] == fitted.layer and scores["probe_accuracy"] == fitted.probe_accuracy[k]
    assert scores["projection"] == pytest.approx(0.75) and scores["cosine"] == pytest.approx(1.0)
    assert scores["projection_p"] < 0.05
    assert scores["probe_rate"] == pytest.approx(3 / 9)
    assert scores["judge_rate"] == pytest.approx(2 / 3)
