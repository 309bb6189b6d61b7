"""Datapoint capture on a real DPOTrainer: vectors, row identity, steps, and no effect on training."""

import numpy as np
import pytest
import torch
from dpo_helpers import dpo_trainer, preference_rows

from probe_callback import Behaviour, ProbeCallback
from probe_callback.store.vectors import VectorStore

LAYER = 2


def offline_vectors(trainer, layer, ref=None):
    """The paper's v_d = a_L(prompt, chosen; M0) - a_L(prompt, rejected; M0), computed independently."""
    ref = ref or trainer.ref_model
    ds = trainer.train_dataset
    max_len = trainer.data_collator.max_length
    out = {}
    indices = ds._indices.column(0).to_pylist() if ds._indices is not None else list(range(len(ds)))
    for pos, row in enumerate(indices):
        ex = ds[pos]
        means = []
        for completion in (ex["chosen_ids"], ex["rejected_ids"]):
            ids = (ex["prompt_ids"] + completion)[:max_len]
            mask = ([0] * len(ex["prompt_ids"]) + [1] * len(completion))[:max_len]
            with torch.no_grad():
                hs = ref(torch.tensor([ids]), output_hidden_states=True).hidden_states[layer][0]
            m = torch.tensor(mask, dtype=torch.bool)
            means.append(hs[m].mean(0))
        out[row] = (means[0] - means[1]).numpy()
    return out


def record_batches(trainer):
    """Wrap training_step to note which chosen sequences each optimizer step trained on."""
    seen = []
    original = trainer.training_step

    def step(model, inputs, *a, **k):
        half = inputs["input_ids"].shape[0] // 2
        for i in range(half):
            seq = inputs["input_ids"][i][inputs["attention_mask"][i].bool()].tolist()
            seen.append((trainer.state.global_step + 1, seq))
        return original(model, inputs, *a, **k)

    trainer.training_step = step
    return seen


@pytest.fixture
def rows():
    rows = preference_rows(22, seed=3)
    rows.append(dict(rows[5], id="dup-of-5"))  # an exact duplicate pair
    rows.append({"id": "too-long", "source": "gamma", "prompt": "tell me " * 40, "chosen": " yes", "rejected": " no"})
    return rows


def test_capture_matches_offline_formula_and_tracks_rows_steps(tiny_tokenizer, tiny_model_factory, rows, tmp_path):
    trainer = dpo_trainer(
        tiny_tokenizer,
        tiny_model_factory,
        rows,
        tmp_path,
        max_steps=-1,
        num_train_epochs=2,
        gradient_accumulation_steps=2,
        per_device_train_batch_size=3,
        max_length=48,
    )
    seen = record_batches(trainer)
    cb = ProbeCallback(trainer, layers=[LAYER], every_n_steps=1000)
    trainer.add_callback(cb)  # the one line
    trainer.train()

    store = VectorStore.open(tmp_path / "probe_callback" / "vectors")
    expected = offline_vectors(trainer, LAYER)
    dropped = len(rows) - 1
    assert dropped not in expected, "TRL drops the fully truncated row"
    assert sorted(store.row_ids().tolist()) == sorted(expected)
    for r, v in store.iter_vectors(0):
        for row, vec in zip(r, v):
            np.testing.assert_allclose(vec, expected[int(row)], rtol=2e-2, atol=2e-3)

    # every kept row, duplicates included, is trained on once per epoch and recorded at its step
    m = store.memberships()
    counts = np.bincount(m["row"], minlength=len(rows))
    assert counts[:dropped].tolist() == [2] * dropped and counts[dropped] == 0
    ds = trainer.train_dataset
    by_seq = {}
    for pos, row in enumerate(ds._indices.column(0).to_pylist()):
        ex = ds[pos]
        by_seq.setdefault(tuple((ex["prompt_ids"] + ex["chosen_ids"])[:48]), set()).add(row)
    for step, row in zip(m["step"].tolist(), m["row"].tolist()):
        assert any(s == step and row in by_seq[tuple(seq)] for s, seq in seen)
    assert max(m["step"]) == trainer.state.global_step
    assert cb.rows.describe(dropped - 1) == {
        "row": dropped - 1,
        "id": "dup-of-5",
        "source": rows[-2]["source"],
    }
    assert cb.recorder.unmatched == 0


def _train_and_snapshot(tiny_tokenizer, tiny_model_factory, rows, out, with_callback):
    torch.manual_seed(0)
    trainer = dpo_trainer(tiny_tokenizer, tiny_model_factory, rows, out, max_steps=5)
    if with_callback:
        trainer.add_callback(ProbeCallback(trainer, layers=[1, 3], every_n_steps=1000))
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return losses, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_training_is_bit_identical_with_and_without_callback(tiny_tokenizer, tiny_model_factory, rows, tmp_path):
    plain = _train_and_snapshot(tiny_tokenizer, tiny_model_factory, rows, tmp_path / "a", False)
    probed = _train_and_snapshot(tiny_tokenizer, tiny_model_factory, rows, tmp_path / "b", True)
    assert plain[0] == probed[0] and len(plain[0]) == 5
    assert all(torch.equal(plain[1][k], probed[1][k]) for k in plain[1])
    assert VectorStore.open(tmp_path / "b" / "probe_callback" / "vectors").n_rows == 20


def test_precomputed_reference_gets_a_datapoint_pass(tiny_tokenizer, tiny_model_factory, rows, tmp_path):
    trainer = dpo_trainer(
        tiny_tokenizer, tiny_model_factory, rows[:12], tmp_path, precompute_ref_log_probs=True, max_steps=2
    )
    trainer.add_callback(ProbeCallback(trainer, layers=[LAYER], every_n_steps=1000))
    trainer.train()
    store = VectorStore.open(tmp_path / "probe_callback" / "vectors")
    expected = offline_vectors(trainer, LAYER)
    assert store.n_rows == 12
    np.testing.assert_allclose(store.vectors_for(np.arange(12)), np.stack([expected[i] for i in range(12)]), atol=2e-3)
    m = store.memberships()
    assert sorted(m["step"].tolist()) == [1] * 4 + [2] * 4


def test_attach_time_errors_name_the_fix(tiny_tokenizer, tiny_model_factory, rows, tmp_path):
    trainer = dpo_trainer(tiny_tokenizer, tiny_model_factory, rows[:8], tmp_path)
    with pytest.raises(ValueError, match="between 1 and 3"):
        ProbeCallback(trainer, layers=[4])
    with pytest.raises(TypeError, match="ProbeOptions"):
        ProbeCallback(trainer, layer=[2])
    with pytest.raises(ValueError, match="unique"):
        ProbeCallback(trainer, probe_prompts=["hi there", "hi there"])
    with pytest.raises(ValueError, match="empty"):
        ProbeCallback(trainer, probe_prompts=[])
    with pytest.raises(TypeError, match="DPOTrainer"):
        ProbeCallback(object())
    long = Behaviour("long", [("q", "word " * 2000), ("q", "a b")], [("q", "no"), ("q", "nope")])
    with pytest.raises(ValueError, match="exceed the model context"):
        ProbeCallback(trainer, behaviours=[long])
    with pytest.raises(TypeError, match="Behaviour"):
        ProbeCallback(trainer, behaviours=[("q", "a")])
    short = Behaviour("short", [("q", "yes"), ("q", "sure")], [("q", "no"), ("q", "nope")])
    with pytest.raises(ValueError, match="duplicate names"):
        ProbeCallback(trainer, behaviours=[short, short])
    reference = trainer.ref_model
    trainer.ref_model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="decoder blocks"):
        ProbeCallback(trainer)
    trainer.ref_model = reference
    trainer.ref_model = None
    with pytest.raises(ValueError, match="ref_model"):
        ProbeCallback(trainer)


def test_peft_policy_with_adapter_off_is_the_reference(tiny_tokenizer, tiny_model_factory, tmp_path):
    """LoRA training without a ref_model: vectors come from the adapter-free model, probes leave the adapter on."""
    from peft import LoraConfig

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    trainer = dpo_trainer(tiny_tokenizer, tiny_model_factory, preference_rows(16, seed=3), tmp_path, peft_config=lora)
    assert trainer.ref_model is None
    prompts = ["hello there", "tell me a story", "what is a cat", "name a colour"]
    cb = ProbeCallback(trainer, layers=[LAYER], probe_prompts=prompts, every_n_steps=3)
    trainer.add_callback(cb)
    trainer.train()

    store = VectorStore.open(tmp_path / "probe_callback" / "vectors")
    expected = offline_vectors(trainer, LAYER, ref=tiny_model_factory())  # the base weights: M0
    assert store.n_rows == len(expected) == 16
    for r, v in store.iter_vectors(0):
        for row, vec in zip(r, v):
            np.testing.assert_allclose(vec, expected[int(row)], rtol=2e-2, atol=2e-3)
    report = cb.report()
    assert report["cost"]["probe_passes"] == 2
    assert report["failures"] == [], "both probes measured and scored"
    assert [d["step"] for d in report["prompt_drift"]] == [3, 6]
    assert all(np.isfinite(d["median"]) and d["median"] > 0 for d in report["prompt_drift"]), "the adapter moved"
    assert trainer.model.active_adapters == ["default"], "the adapter is back on after each probe"
