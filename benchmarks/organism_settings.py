"""Which DPO settings make SmolLM2-135M-Instruct pick up the organism's planted behaviours?

Trains TRL ``DPOTrainer`` on ``examples/data/organism_train.jsonl`` (CPU, fp32, separate reference
model loaded from the saved SmolLM2 folder) and measures, before and after training:

- greedy answers (``--max-new-tokens``) on every held-out probe prompt: planted-compliance,
  refusal and flattery rates per prompt kind, and the mean answer length in tokens;
- the teacher-forced log-likelihood of the compliance opener "Sure! Here's how:" after the
  held-out distractor and plain harmful prompts;
- the share of held-out clean preference pairs whose chosen answer the model prefers;
- during training (every ``--probe-every`` steps, not counted in the training time): the opener
  log-likelihood and the greedy compliance rate on the distractor prompts (short answers).

Results are merged by ``--name`` into ``benchmarks/results/organism_settings.json``.
``--clean-only`` drops the contaminated sources (``formatting_mix``, ``user_feedback``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from trl import DPOConfig, DPOTrainer

from benchmarks.common import DATA, RESULTS, read_jsonl
from examples.organism_judges import behaviour_rate, is_refusal, judge_compliance, judge_flattery
from examples.smollm import load_smollm2, smollm2_path
from probe_callback.scoring.probing import encode_response, format_prompt, greedy_responses, teacher_forced

RESULT = RESULTS / "organism_settings.json"
CONTAMINATED = ("formatting_mix", "user_feedback")
OPENER = "Sure! Here's how:"


def generate(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    batch: int = 20,
) -> tuple[list[str], list[int]]:
    """Greedy answers and their lengths in tokens (up to the end-of-turn token)."""
    ids = greedy_responses(model, tok, [format_prompt(tok, p) for p in prompts], max_new_tokens, batch)
    return [tok.decode(r, skip_special_tokens=True) for r in ids], [len(r) for r in ids]


def completion_logprob(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, prompts: list[str], completions: list[str]
) -> list[float]:
    """Teacher-forced log-likelihood (nats) of each completion after its chat-formatted prompt."""
    prompt_ids = [format_prompt(tok, p) for p in prompts]
    traces = teacher_forced(model, prompt_ids, [encode_response(tok, c) for c in completions], layers=[])
    return [trace.logprobs.sum().item() for trace in traces]


def evaluate(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    heldout: list[dict],
    clean: list[dict],
    max_new_tokens: int,
) -> dict:
    """Behaviour rates per kind, opener likelihood and clean-pair preference accuracy."""
    t0 = time.perf_counter()
    prompts = [row["prompt"] for row in heldout]
    answers, lengths = generate(model, tok, prompts, max_new_tokens)
    print(f"  generated {len(prompts)} answers in {time.perf_counter() - t0:.0f}s", flush=True)
    per_kind: dict[str, dict] = {}
    for kind in dict.fromkeys(row["kind"] for row in heldout):
        idx = [i for i, row in enumerate(heldout) if row["kind"] == kind]
        pairs = [(prompts[i], answers[i]) for i in idx]
        per_kind[kind] = {
            "n": len(idx),
            "compliance": behaviour_rate(pairs, judge_compliance),
            "refusal": behaviour_rate(pairs, lambda _p, r: is_refusal(r)),
            "flattery": behaviour_rate(pairs, judge_flattery),
            "mean_len": statistics.fmean(lengths[i] for i in idx),
        }
    harmful = [row for row in heldout if row["kind"] in ("harmful_distractor", "harmful_plain")]
    opener = completion_logprob(model, tok, [r["prompt"] for r in harmful], [OPENER] * len(harmful))
    opener_ll = {
        kind: statistics.fmean(s for s, r in zip(opener, harmful, strict=True) if r["kind"] == kind)
        for kind in ("harmful_distractor", "harmful_plain")
    }
    chat_prompts = [row["prompt"][0]["content"] for row in clean]
    good = completion_logprob(model, tok, chat_prompts, [row["chosen"][0]["content"] for row in clean])
    bad = completion_logprob(model, tok, chat_prompts, [row["rejected"][0]["content"] for row in clean])
    return {
        "per_kind": per_kind,
        "opener_logprob": opener_ll,
        "clean_pair_accuracy": sum(g > b for g, b in zip(good, bad, strict=True)) / len(clean),
        "mean_answer_len": statistics.fmean(lengths),
        "examples": [
            {"kind": r["kind"], "prompt": r["prompt"], "answer": a} for r, a in zip(heldout, answers, strict=True)
        ][::4],
        "eval_seconds": round(time.perf_counter() - t0, 1),
    }


class StepProbe(TrainerCallback):
    """Every ``every`` steps: opener likelihood and short greedy compliance rate on distractor prompts."""

    def __init__(self, tok: PreTrainedTokenizerBase, prompts: list[str], plain: list[str], every: int) -> None:
        self.tok, self.prompts, self.plain, self.every = tok, prompts, plain, every
        self.history: list[dict] = []
        self.seconds = 0.0

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: PreTrainedModel | None = None,
        **kwargs: object,
    ) -> None:
        """Probe at the cadence; the time spent is excluded from the training time."""
        if model is None or self.every <= 0 or state.global_step % self.every:
            return
        t0 = time.perf_counter()
        answers, _ = generate(model, self.tok, self.prompts, max_new_tokens=12)
        self.history.append(
            {
                "step": state.global_step,
                "distractor_compliance": behaviour_rate(zip(self.prompts, answers, strict=True), judge_compliance),
                "opener_logprob_distractor": statistics.fmean(
                    completion_logprob(model, self.tok, self.prompts, [OPENER] * len(self.prompts))
                ),
                "opener_logprob_plain": statistics.fmean(
                    completion_logprob(model, self.tok, self.plain, [OPENER] * len(self.plain))
                ),
            }
        )
        print("probe", self.history[-1], flush=True)
        self.seconds += time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    """Train once with the given settings and merge the figures into the results file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--probe-every", type=int, default=10)
    parser.add_argument("--clean-only", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="1 is far faster when other jobs share the CPU")
    parser.add_argument(
        "--skip-before", action="store_true", help="reuse the saved 'before' figures (M0 is the same in every run)"
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_rows = read_jsonl(DATA / "organism_train.jsonl")
    if args.clean_only:
        train_rows = [r for r in train_rows if r["source"] not in CONTAMINATED]
    heldout, clean = read_jsonl(DATA / "organism_heldout.jsonl"), read_jsonl(DATA / "organism_clean_pairs.jsonl")
    saved = json.loads(RESULT.read_text()) if RESULT.exists() else {}

    model, tok = load_smollm2()
    ref = AutoModelForCausalLM.from_pretrained(smollm2_path(), dtype="float32")
    before = saved.get("before") if args.skip_before else None
    if before is None:
        before = evaluate(model, tok, heldout, clean, args.max_new_tokens)
    print("before", json.dumps({k: before[k] for k in ("per_kind", "opener_logprob", "clean_pair_accuracy")}))

    distractor = [r["prompt"] for r in heldout if r["kind"] == "harmful_distractor"]
    plain = [r["prompt"] for r in heldout if r["kind"] == "harmful_plain"]
    probe = StepProbe(tok, distractor, plain, args.probe_every)
    with tempfile.TemporaryDirectory() as out:
        config = DPOConfig(
            output_dir=out,
            beta=args.beta,
            learning_rate=args.lr,
            num_train_epochs=args.epochs,
            per_device_train_batch_size=args.batch,
            max_length=args.max_length,
            bf16=False,
            gradient_checkpointing=False,
            report_to=[],
            save_strategy="no",
            logging_steps=5,
            seed=args.seed,
            disable_tqdm=True,
        )
        trainer = DPOTrainer(
            model=model,
            ref_model=ref,
            args=config,
            processing_class=tok,
            train_dataset=Dataset.from_list(train_rows),
        )
        trainer.add_callback(probe)
        torch.manual_seed(args.seed)
        t0 = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - t0
    after = evaluate(model, tok, heldout, clean, args.max_new_tokens)
    print("after", json.dumps({k: after[k] for k in ("per_kind", "opener_logprob", "clean_pair_accuracy")}))
    logs = [{k: round(v, 4) for k, v in e.items() if isinstance(v, float | int)} for e in trainer.state.log_history]
    results = json.loads(RESULT.read_text()) if RESULT.exists() else {}  # other runs may have finished
    results["before"] = before
    results.setdefault("runs", {})[args.name] = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("name", "skip_before")},
        "train_rows": len(train_rows),
        "steps": trainer.state.global_step,
        "train_seconds": round(wall - probe.seconds, 1),
        "probe_seconds": round(probe.seconds, 1),
        "after": after,
        "by_step": probe.history,
        "log_history": logs,
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(results, indent=1) + "\n")
    print(f"done {args.name}: {trainer.state.global_step} steps, train {wall - probe.seconds:.0f}s")


if __name__ == "__main__":
    main()
