"""Run by `torchrun` from test_sharded.py: the planted organism under FSDP2 or ZeRO-3 (gloo, CPU), then a resume.

`python sharded_run.py MODE OUT`, MODE one of `single` (one process, no sharding), `ddp`, `fsdp1`, `fsdp2`, `zero3`,
`nodes` (DDP with `save_on_each_node=True`: OUT is this node's own output folder).
Each rank writes `rank{N}.json`: the step it stopped at, the backend, M0's answers and every probe's answers.
"""

import json
import sys
from pathlib import Path

import torch
from conftest import _build_tokenizer, tiny_llama_config
from dpo_helpers import dpo_trainer, fsdp_on_cpu
from test_callback import DPO, MAX_STEPS, probe_callback
from tiny_organism import organism_rows, scripted_organism

from probe_callback.run.sharding import backend_name
from probe_callback.scoring.watch import Watch

ZERO3 = {
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "train_batch_size": "auto",
    "bf16": {"enabled": False},
    "fp16": {"enabled": False},
}


def record_probes(answers: list[list[str]]) -> None:
    """Keep every probe's greedy answers (to compare ranks and backends)."""
    probe = Watch.probe

    def recorded(self, *args, **kwargs):
        result = probe(self, *args, **kwargs)
        answers.append(result.responses)
        return result

    Watch.probe = recorded


mode, out = sys.argv[1], Path(sys.argv[2])
settings = {
    "ddp": {},
    "single": {},
    "nodes": {"save_on_each_node": True},
    # FSDP1 on CPU: accelerate refuses sync_module_states=True (the default; every rank builds the same model
    # here), and its full-state-dict save (offload_to_cpu=True) segfaults in FSDP1's clone: sharded checkpoints
    "fsdp1": {
        "fsdp": "full_shard",
        "fsdp_config": {"version": 1, "sync_module_states": False, "state_dict_type": "SHARDED_STATE_DICT"},
    },
    "fsdp2": {"fsdp": "full_shard", "fsdp_config": {"version": 2}},
    "zero3": {},
}
settings = {**DPO, "per_device_train_batch_size": 4 if mode == "single" else 2, **settings[mode]}
if mode in ("fsdp1", "fsdp2"):
    fsdp_on_cpu()
if mode == "zero3":
    settings["deepspeed"] = ZERO3
torch.set_num_threads(1)
tokenizer = _build_tokenizer()
organism = scripted_organism(tokenizer, tiny_llama_config(tokenizer))
answers: list[list[str]] = []
record_probes(answers)
rows = organism_rows()
trainer = dpo_trainer(tokenizer, organism, rows, out, **settings)
callback = probe_callback(trainer)
trainer.add_callback(callback)
trainer.train()
paused_at = trainer.state.global_step
rank = trainer.args.process_index
result = {
    "step": paused_at,
    "world": trainer.args.world_size,
    "backend": backend_name(trainer.accelerator),
    "r0": callback.watch.answers(callback.watch.r0),
    "probes": list(answers),
}
# Resume from the pause and carry on to the end, alerting only. (With save_on_each_node, transformers 5.24 saves
# no weights on the other nodes' checkpoints, so those cannot resume without a copy of node 0's.)
if paused_at < MAX_STEPS and mode != "nodes":
    resumed = dpo_trainer(tokenizer, organism, rows, out, **settings)
    resumed.add_callback(probe_callback(resumed, pause_on_regression=False))
    resumed.train(resume_from_checkpoint=str(out / f"checkpoint-{paused_at}"))
    result["resumed_to"] = resumed.state.global_step
(out / f"rank{rank}.json").write_text(json.dumps(result))
