"""Run by `torchrun --nproc_per_node 2` from test_distributed.py: the planted organism under DDP (gloo, CPU)."""

import json
import sys
from pathlib import Path

import torch
from conftest import _build_tokenizer, tiny_llama_config
from dpo_helpers import dpo_trainer
from test_callback import DPO, probe_callback
from tiny_organism import organism_rows, scripted_organism

torch.set_num_threads(1)
out = Path(sys.argv[1])
tokenizer = _build_tokenizer()
organism = scripted_organism(tokenizer, tiny_llama_config(tokenizer))
trainer = dpo_trainer(tokenizer, organism, organism_rows(), out, per_device_train_batch_size=2, **DPO)
trainer.add_callback(probe_callback(trainer))
trainer.train()
rank = trainer.args.process_index
(out / f"rank{rank}.json").write_text(json.dumps({"step": trainer.state.global_step, "world": trainer.args.world_size}))
