"""Which model is M0: TRL's frozen copy of a pretrained adapter, or the untrained policy when DPO precomputes."""

import logging

import numpy as np
import torch
from datasets import Dataset
from dpo_helpers import preference_rows
from test_capture import LAYER, offline_vectors
from trl import DPOConfig, DPOTrainer

from probe_callback import ProbeCallback
from probe_callback.store import VectorStore


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


def test_precompute_warns_that_trl_forgets_the_dropped_rows(tiny_tokenizer, tiny_model_factory, tmp_path, caplog):
    rows = preference_rows(12, seed=3)
    rows[4]["prompt"] = "tell me about " * 30  # fills max_length: TRL drops it
    trainer = no_ref_trainer(
        tiny_tokenizer, tiny_model_factory(), rows, tmp_path, precompute_ref_log_probs=True, max_length=40
    )
    assert len(trainer.train_dataset) == 11 and trainer.train_dataset._indices is None
    trainer.add_callback(
        ProbeCallback(
            trainer, layers=[LAYER], probe_prompts=["hello there", "tell me a story", "say hi", "name a colour"]
        )
    )
    with caplog.at_level(logging.WARNING, logger="probe_callback"):
        trainer.train()
    assert "TRL keeps no record of the rows it drops" in caplog.text
