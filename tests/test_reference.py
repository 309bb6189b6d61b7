"""Which model is M0: TRL's frozen copy of a pretrained adapter, or the untrained policy when DPO precomputes."""

import importlib
import logging
import sys

import numpy as np
import torch
from datasets import Dataset
from dpo_helpers import preference_rows
from test_capture import LAYER, offline_vectors
from trl import DPOConfig, DPOTrainer

from probe_callback import ProbeCallback
from probe_callback.capture.rows import RowIndex
from probe_callback.store.vectors import VectorStore


def no_ref_trainer(tokenizer, model, rows, out, **config):
    """A DPOTrainer with no ref_model: TRL picks the reference itself."""
    settings = {"per_device_train_batch_size": 4, "max_steps": 2, "use_cpu": True, "report_to": [], "bf16": False}
    settings |= {"save_strategy": "no", "disable_tqdm": True, "learning_rate": 1e-3, "seed": 0, **config}
    return DPOTrainer(
        model=model,
        ref_model=None,
        args=DPOConfig(output_dir=str(out), **settings),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )


def test_a_pretrained_adapter_is_its_own_reference(tiny_tokenizer, tiny_model_factory, tmp_path):
    """TRL keeps a frozen copy of an adapter the policy came with ("ref"): that, not the base model, is M0."""
    from peft import LoraConfig, get_peft_model
    from trl.trainer.utils import use_adapter

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    policy = get_peft_model(tiny_model_factory(), lora)  # an adapter trained before (non-zero)
    trainer = no_ref_trainer(tiny_tokenizer, policy, preference_rows(12, seed=3), tmp_path)
    assert "ref" in trainer.model.peft_config
    cb = ProbeCallback(
        trainer,
        layers=[LAYER],
        probe_prompts=["hello there", "tell me a story", "say hi", "name a colour"],
        every_n_steps=1,
    )
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        with cb._reference() as ref:
            got = ref(input_ids=ids).logits
        with use_adapter(trainer.model, "ref"):
            frozen = trainer.model(input_ids=ids).logits
        with trainer.model.disable_adapter():
            base = trainer.model(input_ids=ids).logits
    torch.testing.assert_close(got, frozen)
    assert not torch.allclose(got, base)
    assert trainer.model.active_adapters == ["default"]
    trainer.add_callback(cb)
    trainer.train()
    report = cb.report()
    assert report["cost"]["probe_passes"] == 2 and trainer.model.active_adapters == ["default"]
    assert report["failures"] == [] and len(report["prompt_drift"]) == 2, "both probes measured and scored"


def test_precompute_without_ref_model_keeps_the_untrained_policy(tiny_tokenizer, tiny_model_factory, tmp_path, caplog):
    rows = preference_rows(12, seed=3)
    trainer = no_ref_trainer(tiny_tokenizer, tiny_model_factory(), rows, tmp_path, precompute_ref_log_probs=True)
    assert trainer.ref_model is None
    with caplog.at_level(logging.WARNING, logger="probe_callback"):
        cb = ProbeCallback(
            trainer,
            layers=[LAYER],
            probe_prompts=["hello there", "tell me a story", "say hi", "name a colour"],
            every_n_steps=1,
        )
    assert "frozen copy of the initial policy" in caplog.text
    trainer.add_callback(cb)
    trainer.train()
    report = cb.report()
    assert trainer.state.global_step == 2 and report["cost"]["probe_passes"] == 2
    assert report["failures"] == [] and len(report["prompt_drift"]) == 2, "both probes measured and scored"
    store = VectorStore.open(tmp_path / "probe_callback" / "vectors")
    expected = offline_vectors(trainer, LAYER, ref=tiny_model_factory())  # the untrained policy: M0
    np.testing.assert_allclose(store.vectors_for(np.arange(12)), np.stack([expected[i] for i in range(12)]), atol=2e-3)


PROMPTS = ["hello there", "tell me a story", "say hi", "name a colour"]


def test_precompute_rows_index_the_users_dataset_after_trl_drops_rows(tiny_tokenizer, tiny_model_factory, tmp_path):
    """TRL drops rows whose prompt fills max_length and, precomputing, flattens its index mapping away inside
    DPOTrainer.__init__: `row` (vectors, batches, ids, mitigate) must still index the user's dataset."""
    rows = preference_rows(14, seed=3)
    for i in (1, 4, 9):
        rows[i]["prompt"] = "tell me about " * 30  # fills max_length: TRL drops it
    trainer = no_ref_trainer(
        tiny_tokenizer, tiny_model_factory(), rows, tmp_path, precompute_ref_log_probs=True, max_length=40
    )
    assert len(trainer.train_dataset) == 11 and trainer.train_dataset._indices is None  # TRL kept no mapping
    cb = ProbeCallback(trainer, layers=[LAYER], probe_prompts=PROMPTS, every_n_steps=1000)
    trainer.add_callback(cb)
    trainer.train()

    kept = [i for i in range(14) if i not in (1, 4, 9)]
    assert cb.rows.order.tolist() == kept
    store = VectorStore.open(tmp_path / "probe_callback" / "vectors")
    assert sorted(store.row_ids().tolist()) == kept, "the datapoint pass stored every kept row under its own index"
    for pos, row in enumerate(kept):  # the row's own prompt and id
        assert cb.rows.id(row) == rows[row]["id"]
        assert trainer.train_dataset[pos]["prompt"] == rows[row]["prompt"]
    trained = store.memberships()["row"].tolist()
    assert len(trained) == 8 and set(trained) <= set(kept)

    from probe_callback import mitigate

    top = [{**cb.rows.describe(r), "score": 1.0 - 0.1 * k} for k, r in enumerate((10, 13, 2))]
    report = {"behaviours": [{"name": "x", "flagged_at_step": 1, "top_rows": top}]}
    clean, manifest = mitigate(report, Dataset.from_list(rows), "filter", top_k=3)
    assert sorted(set(r["id"] for r in rows) - set(clean["id"])) == sorted(rows[r]["id"] for r in (10, 13, 2))


def test_precompute_warns_when_the_trainer_predates_the_import(tiny_tokenizer, tiny_model_factory, tmp_path, caplog):
    from probe_callback.capture.kept_rows import KEPT_ROWS

    rows = preference_rows(12, seed=3)
    rows[4]["prompt"] = "tell me about " * 30
    trainer = no_ref_trainer(
        tiny_tokenizer, tiny_model_factory(), rows, tmp_path, precompute_ref_log_probs=True, max_length=40
    )
    delattr(trainer, KEPT_ROWS)  # as if DPOTrainer was built before probe_callback was imported
    with caplog.at_level(logging.WARNING, logger="probe_callback"):
        ProbeCallback(trainer, layers=[LAYER], probe_prompts=PROMPTS)
        RowIndex.from_trainer(trainer)  # what the callback does at train begin
    assert "TRL keeps no record of the rows it drops" in caplog.text and "Import probe_callback before" in caplog.text


def test_trl_imported_after_probe_callback_is_wrapped_too(monkeypatch):
    import trl.trainer

    from probe_callback.capture.kept_rows import _DPO_MODULE, _WrapOnImport, remember_kept_rows

    monkeypatch.delitem(sys.modules, _DPO_MODULE)
    monkeypatch.setattr(trl.trainer, "dpo_trainer", None, raising=False)
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    remember_kept_rows()
    assert isinstance(sys.meta_path[0], _WrapOnImport)
    fresh = importlib.import_module(_DPO_MODULE)
    assert fresh.DPOTrainer._precompute_ref_logps._probe_callback
    assert not isinstance(fresh.__loader__, _WrapOnImport) and not isinstance(fresh.__spec__.loader, _WrapOnImport)
    assert not any(isinstance(f, _WrapOnImport) for f in sys.meta_path), "the finder removes itself"
