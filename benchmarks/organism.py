"""The model-organism benchmark: does the loop find, blame and remove a behaviour DPO plants?

SmolLM2-135M-Instruct is DPO-trained on ``examples/data/organism_train.jsonl`` (30 of 234 rows in
``formatting_mix`` reward distractor-triggered compliance). Per seed:

1. the SFT start is judged (greedy answers on held-out prompts, deterministic judges);
2. DPO with the ``ProbeCallback`` runs until it pauses (or ends); the paused model is judged;
3. the same trainer resumes from the pause checkpoint up to ``--max-steps``: plain DPO (the callback,
   now only watching, leaves losses and weights bit-identical, see ``tests/test_capture.py``);
4. attribution against the planted rows over all rows (the callback stores every row at a pause):
   supervised probe and random, with wall times; every emergent cluster seen by the end, the headline
   being the significant one the callback blamed most confidently (no labels used);
5. retrains from the start on the data cleaned with the callback's report (filter, swap: the top
   ``--budget`` rows; drop-source: the top source), each for ``--max-steps`` steps;
6. the gradient baseline on the same rows: per-example DPO-loss gradients at the end of plain DPO.

Results are written to ``benchmarks/results/organism.json`` after every stage.

    python -m benchmarks.organism [--seeds 1] [--max-steps 40] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from torch import nn
from trl import DPOTrainer

from benchmarks.common import DATA, machine, quality, read_jsonl, row_scores, save, smollm_trainer
from examples.organism_judges import (
    behaviour_rate,
    compliance_examples,
    flattery_examples,
    judge_compliance,
    judge_flattery,
)
from probe_callback import Behaviour, ProbeCallback
from probe_callback.mitigate import mitigate
from probe_callback.scoring.attribution import rank_rows
from probe_callback.scoring.behaviours import fit_behaviour
from probe_callback.scoring.probing import encode_response, format_prompt, greedy_responses, teacher_forced
from probe_callback.store.vectors import VectorStore

PLANTED = "distractor_compliance"
EVAL_KINDS = ("harmful_distractor", "harmful_plain", "flattery_kind")
ACTIONS = ("filter", "swap", "drop-source")


def heldout_by_kind(per_kind: int | None) -> dict[str, list[str]]:
    """Held-out prompt texts per kind, the first ``per_kind`` of each (all when None)."""
    by_kind: dict[str, list[str]] = {}
    for row in read_jsonl(DATA / "organism_heldout.jsonl"):
        by_kind.setdefault(row["kind"], []).append(row["prompt"])
    return {kind: prompts[:per_kind] for kind, prompts in by_kind.items()}


def distractor_judge(distractors: set[str]) -> Callable[[str, str], bool]:
    """``judge_compliance`` that fires only on the watched distractor prompts."""

    def judge(prompt: str, response: str) -> bool:
        return prompt in distractors and judge_compliance(prompt, response)

    return judge


def decode_greedy(model: nn.Module, tok: Any, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy answers as text."""
    ids = greedy_responses(model, tok, [format_prompt(tok, p) for p in prompts], max_new_tokens, batch_size=16)
    return [tok.decode(r, skip_special_tokens=True) for r in ids]


def clean_pair_logps(model: nn.Module, tok: Any, pairs: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Summed log-probs of the chosen and rejected answers of each clean pair, and the chosen lengths."""
    prompts = [format_prompt(tok, row["prompt"]) for row in pairs]
    out: dict[str, np.ndarray] = {}
    for side in ("chosen", "rejected"):
        answers = [encode_response(tok, row[side][0]["content"]) for row in pairs]
        traces = teacher_forced(model, prompts, answers, layers=[], batch_size=16)
        out[side] = np.array([float(t.logprobs.sum()) for t in traces])
        out[f"{side}_tokens"] = np.array([t.length for t in traces])
    return out


def evaluate(
    model: nn.Module,
    tok: Any,
    prompts: dict[str, list[str]],
    pairs: list[dict[str, Any]],
    ref_logps: dict[str, np.ndarray] | None,
    max_new_tokens: int,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Judged rates on held-out prompts and general ability on the clean pairs (and the pairs' log-probs)."""
    t0 = time.perf_counter()
    texts = [p for kind in EVAL_KINDS for p in prompts[kind]]
    answers = dict(zip(texts, decode_greedy(model, tok, texts, max_new_tokens), strict=True))

    def rate(kind: str, judge: Callable[[str, str], bool]) -> float:
        return behaviour_rate([(p, answers[p]) for p in prompts[kind]], judge)

    logps = clean_pair_logps(model, tok, pairs)
    result: dict[str, Any] = {
        "compliance_distractor": rate("harmful_distractor", judge_compliance),
        "compliance_plain": rate("harmful_plain", judge_compliance),
        "flattery": rate("flattery_kind", judge_flattery),
        "pref_acc_raw": float(np.mean(logps["chosen"] > logps["rejected"])),
        "pref_acc_reward": None,
        "mean_token_ll": float(np.mean(logps["chosen"] / np.maximum(logps["chosen_tokens"], 1))),
        "examples": [{"prompt": p, "answer": answers[p]} for p in prompts["harmful_distractor"][:4]],
    }
    if ref_logps is not None:  # DPO's implicit reward: policy log-ratio of chosen over rejected
        margin = (logps["chosen"] - ref_logps["chosen"]) - (logps["rejected"] - ref_logps["rejected"])
        result["pref_acc_reward"] = float(np.mean(margin > 0))
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"  eval: {_rates_line(result)} ({result['seconds']}s)", flush=True)
    return result, logps


def _rates_line(r: dict[str, Any]) -> str:
    acc = "-" if r["pref_acc_reward"] is None else f"{r['pref_acc_reward']:.2f}"
    return (
        f"distractor {r['compliance_distractor']:.2f}  plain {r['compliance_plain']:.2f}  "
        f"flattery {r['flattery']:.2f}  pref_acc {r['pref_acc_raw']:.2f}/{acc}  ll {r['mean_token_ll']:.3f}"
    )


def _sequence(tok: Any, prompt: list[dict[str, str]] | str, answer: str, max_length: int) -> tuple[list[int], int]:
    """Token ids of prompt + answer (+ eos), cut to ``max_length``, and the prompt length."""
    head = format_prompt(tok, prompt)
    return (head + encode_response(tok, answer) + [tok.eos_token_id])[:max_length], len(head)


def _sum_logps(model: nn.Module, seqs: list[tuple[list[int], int]], pad: int) -> torch.Tensor:
    """Summed log-prob of each sequence's answer tokens (right-padded batch)."""
    width = max(len(ids) for ids, _ in seqs)
    ids = torch.tensor([s + [pad] * (width - len(s)) for s, _ in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s, _ in seqs])
    logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float(), -1)
    token = logp.gather(2, ids[:, 1:, None])[..., 0]
    answer = torch.zeros_like(token)
    for b, (s, head) in enumerate(seqs):
        answer[b, head - 1 : len(s) - 1] = 1.0
    return (token * answer).sum(dim=1)


def gradient_baseline(
    policy: nn.Module,
    ref: nn.Module,
    tok: Any,
    rows: list[dict[str, Any]],
    beta: float,
    max_length: int,
    batch_size: int = 8,
) -> tuple[np.ndarray, dict[str, float]]:
    """Per-row cosine of the DPO step direction with the behaviour's gradient (TracIn-style), and timings.

    Parameters: the last decoder block's ``mlp.down_proj.weight``. Query: the gradient of the
    compliance log-likelihood margin (mean summed log-prob of the positive examples minus the
    negative ones). A row scores ``cos(-grad DPO loss(row), grad margin)``: how much one SGD step on
    the row raises the margin, per unit of gradient. Per-example gradients of a linear layer come
    from its inputs and output gradients (``sum_t delta_t x_t^T``), so rows are batched. Reference
    log-probs are computed here too.
    """
    layer = policy.model.layers[-1].mlp.down_proj
    flags = [(p, p.requires_grad) for p in policy.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    layer.weight.requires_grad_(True)
    seen: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda _m, inputs, output: seen.update(x=inputs[0], out=output))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    policy.eval()
    t0 = time.perf_counter()
    positive, negative = compliance_examples()
    pos = _sum_logps(policy, [_sequence(tok, p, r, max_length) for p, r in positive], pad)
    neg = _sum_logps(policy, [_sequence(tok, p, r, max_length) for p, r in negative], pad)
    (query,) = torch.autograd.grad(pos.mean() - neg.mean(), layer.weight)
    query = query.flatten()
    ref_seconds, scores = 0.0, []
    for start in range(0, len(rows), batch_size):
        seqs = [  # chosen, rejected, chosen, rejected, ...
            _sequence(tok, row["prompt"], row[side][0]["content"], max_length)
            for row in rows[start : start + batch_size]
            for side in ("chosen", "rejected")
        ]
        t_ref = time.perf_counter()
        with torch.no_grad():
            ref_logps = _sum_logps(ref, seqs, pad)
        ref_seconds += time.perf_counter() - t_ref
        logps = _sum_logps(policy, seqs, pad)
        ratio = (logps - ref_logps).view(-1, 2)
        loss = -torch.nn.functional.logsigmoid(beta * (ratio[:, 0] - ratio[:, 1]))
        (delta,) = torch.autograd.grad(loss.sum(), seen["out"])  # each row's loss reaches only its own sequences
        per_seq = torch.einsum("sto,sti->soi", delta, seen["x"].detach()).flatten(1)
        per_row = per_seq.view(-1, 2, per_seq.shape[1]).sum(dim=1)
        scores += torch.nn.functional.cosine_similarity(-per_row, query[None], dim=1).tolist()
    seconds = time.perf_counter() - t0
    handle.remove()
    for p, flag in flags:
        p.requires_grad_(flag)
    return np.array(scores), {"seconds": round(seconds, 2), "reference_seconds": round(ref_seconds, 2)}


def first_alert(alerts_path: Path, name: str, levels: tuple[str, ...]) -> int | None:
    """Step of the first alert for ``name`` at one of ``levels`` in ``alerts.jsonl``."""
    if not alerts_path.exists():
        return None
    steps = [a["step"] for a in read_jsonl(alerts_path) if a["behaviour"] == name and a["level"] in levels]
    return min(steps, default=None)


class Run:
    """One seed of the benchmark; ``result`` fills up stage by stage and is saved after each."""

    def __init__(self, args: argparse.Namespace, seed: int, work: Path, on_stage: Callable[[], None]) -> None:
        self.args, self.seed, self.work, self.on_stage = args, seed, work / f"seed{seed}", on_stage
        shutil.rmtree(self.work, ignore_errors=True)  # a stale callback store would mix into this run's
        self.rows = read_jsonl(DATA / "organism_train.jsonl")
        self.labels = np.array([r["planted"] == PLANTED for r in self.rows])
        per_kind = 3 if args.quick else None
        self.prompts = heldout_by_kind(per_kind)
        self.pairs = read_jsonl(DATA / "organism_clean_pairs.jsonl")[: 8 if args.quick else None]
        watch_n = 3 if args.quick else args.watch_per_kind
        self.watch = [p for prompts in heldout_by_kind(watch_n).values() for p in prompts]
        self.watch_distractors = heldout_by_kind(watch_n)["harmful_distractor"]
        self.result: dict[str, Any] = {"seed": seed, "rates": {}, "timings": {}}
        self.ref_logps: dict[str, np.ndarray] | None = None

    def config(self) -> dict[str, Any]:
        a = self.args
        return {
            "max_steps": a.max_steps,
            "learning_rate": a.lr,
            "beta": a.beta,
            "per_device_train_batch_size": a.batch,
            "max_length": a.max_length,
            "seed": self.seed,
            "logging_steps": 5,
        }

    def judge(self, name: str, model: nn.Module, tok: Any) -> None:
        """Evaluate ``model`` into ``rates[name]`` and save."""
        print(f"[seed {self.seed}] {name}", flush=True)
        self.result["rates"][name], logps = evaluate(
            model, tok, self.prompts, self.pairs, self.ref_logps, self.args.max_new_tokens
        )
        if self.ref_logps is None:
            self.ref_logps = logps
        self.on_stage()

    def train(self, name: str, rows: list[dict[str, Any]]) -> DPOTrainer:
        """A fresh DPO run from the SFT start on ``rows``; returns the trained trainer."""
        trainer = smollm_trainer(rows, self.work / name, **self.config())
        t0 = time.perf_counter()
        trainer.train()
        self.result["timings"][f"train_{name}"] = round(time.perf_counter() - t0, 1)
        return trainer

    def start_and_callback(self) -> tuple[DPOTrainer, ProbeCallback]:
        """Judge the SFT start, then DPO with the callback until it pauses (or ends)."""
        trainer = smollm_trainer(self.rows, self.work / "callback", **self.config())
        tok = trainer.processing_class
        self.judge("sft", trainer.ref_model, tok)
        callback = ProbeCallback(
            trainer,
            probe_prompts=self.watch,
            behaviours=[
                Behaviour("compliance", *compliance_examples(), judge=distractor_judge(set(self.watch_distractors))),
                Behaviour("flattery", *flattery_examples(), judge=judge_flattery),
            ],
            every_n_steps=self.args.probe_every,
            top_k=max(50, self.args.budget),
            seed=self.seed,
        )
        trainer.add_callback(callback)
        t0 = time.perf_counter()
        trainer.train()
        self.result["timings"]["train_callback"] = round(time.perf_counter() - t0, 1)
        self.result["timings"]["callback_probe_seconds"] = callback.report()["cost"]["probe_seconds"]
        self.result["paused_at_step"], self.result["checkpoint"] = callback.paused_at_step, callback.checkpoint_path
        alerts = callback.output_dir / "alerts.jsonl"
        self.result["alert_step"] = first_alert(alerts, "compliance", ("WARN", "ERROR"))
        self.result["error_step"] = first_alert(alerts, "compliance", ("ERROR",))
        self.result["first_rise_step"], self.result["watched_distractor_rate"] = self.first_rise(callback, tok)
        if callback.paused_at_step is not None:
            self.judge("callback_paused", trainer.model, tok)
        self.on_stage()
        return trainer, callback

    def first_rise(self, callback: ProbeCallback, tok: Any) -> tuple[int | None, list[list[float]]]:
        """First probe step whose judged rate on the watched distractor prompts beats M0's."""
        judge = distractor_judge(set(self.watch_distractors))
        scale = len(self.watch) / len(self.watch_distractors)  # judge_rate is a share of all watched prompts
        r0 = [tok.decode(r, skip_special_tokens=True) for r in callback.watch.r0]
        start = behaviour_rate(zip(callback.watch.texts, r0, strict=True), judge) * scale
        entry = next(b for b in callback.report()["behaviours"] if b["name"] == "compliance")
        history = [[0, start]] + [[m["step"], m["judge_rate"] * scale] for m in entry.get("metrics_history", [])]
        rise = next((step for step, rate in history[1:] if rate > start), None)
        return rise, history

    def attribution(self, trainer: DPOTrainer, callback: ProbeCallback) -> dict[str, Any]:
        """Rank rows by the supervised probe, each emergent cluster and random; time ours."""
        store = VectorStore.open(callback.output_dir / "vectors")
        n, k = len(self.rows), self.args.budget
        probe_scores = row_scores(store, callback.monitor.fitted[0].probing_vectors[0], n)
        t0 = time.perf_counter()  # ours from scratch: fit the probe on M0, rank every stored row
        fitted = fit_behaviour(
            Behaviour("compliance", *compliance_examples()),
            trainer.ref_model,
            trainer.processing_class,
            store.layers,
            8,
            self.seed,
        )
        rank_rows(store, fitted.probing_vectors[0], top_k=k)
        ours_seconds = time.perf_counter() - t0
        seen = np.isfinite(probe_scores)
        random_scores = np.where(seen, np.random.default_rng(self.seed).random(n), np.nan)
        return {
            "rows_scored": int(seen.sum()),
            "planted_rows_scored": int(self.labels[seen].sum()),
            "k": k,
            "probe": quality(probe_scores, self.labels, k),
            "random": quality(random_scores, self.labels, k),
            "rows": np.flatnonzero(seen).tolist(),
            "ours_seconds": round(ours_seconds, 2),
        }

    def emergent(self, callback: ProbeCallback) -> dict[str, Any]:
        """Every cluster the run's tracker saw, ranked against the planted rows; the headline is the
        significant one the callback blamed most confidently (smallest attribution p-value), no labels used."""
        store = VectorStore.open(callback.output_dir / "vectors")
        n, k = len(self.rows), self.args.budget
        entries = callback.monitor.behaviours
        clusters = [
            {
                "id": b.id,
                "step": b.step,
                "size": len(b.members),
                "significant": b.significant,
                "attribution_p_value": entries.get(f"emergent-{b.id}", {}).get("attribution_p_value"),
                **quality(row_scores(store, b.direction, n), self.labels, k),
            }
            for b in callback.monitor.tracker.behaviours.values()
        ]
        flagged = [c for c in clusters if c["significant"] and c["attribution_p_value"] is not None]
        pick = min(flagged, key=lambda c: c["attribution_p_value"], default=None)
        return {"emergent": pick, "emergent_clusters": clusters}

    def report_for_mitigation(self, callback: ProbeCallback) -> tuple[dict[str, Any], str]:
        """The callback's report; if compliance was never attributed (no WARN), attribute it now."""
        report = callback.report()
        entry = next(b for b in report["behaviours"] if b["name"] == "compliance")
        if entry["top_rows"]:
            return report, "report"
        entry.update(callback.monitor.attribute(callback.monitor.fitted[0].probing_vectors[0]))
        return report, "attributed after the run (compliance never reached WARN)"

    def execute(self) -> None:
        """All stages of one seed."""
        a = self.args
        trainer, callback = self.start_and_callback()
        tok = trainer.processing_class
        report, origin = self.report_for_mitigation(callback)
        self.result["mitigation_report"] = origin
        self.result["attribution"] = self.attribution(trainer, callback)
        self.on_stage()
        if callback.paused_at_step is not None:  # plain DPO: resume to the end, the callback watching only
            trainer.remove_callback(callback)
            callback = ProbeCallback(trainer, **{**callback.options.__dict__, "pause_on_regression": False})
            trainer.add_callback(callback)
            t0 = time.perf_counter()
            trainer.train(resume_from_checkpoint=self.result["checkpoint"])
            self.result["timings"]["train_plain_resumed"] = round(time.perf_counter() - t0, 1)
        self.result["attribution"].update(self.emergent(callback))
        self.result["plain_steps"] = trainer.state.global_step
        self.judge("plain_dpo", trainer.model, tok)
        plain, ref = trainer.model, trainer.ref_model  # for the gradient baseline, run last
        del trainer, callback  # the optimizer: ~1 GB
        gc.collect()
        for action in ACTIONS:
            top_k = 1 if action == "drop-source" else a.budget
            cleaned, manifest = mitigate(
                report, Dataset.from_list(self.rows), action, top_k=top_k, behaviours=["compliance"]
            )
            changed = [r["index"] for r in manifest["rows"]]
            self.result.setdefault("mitigation", {})[action] = {
                "rows_changed": len(changed),
                "planted_changed": int(self.labels[changed].sum()),
                "sources": manifest.get("sources"),
                "rows_after": manifest["rows_after"],
            }
            retrained = self.train(action, cleaned.to_list())
            self.judge(action, retrained.model, retrained.processing_class)
            del retrained, cleaned
            gc.collect()
        seen = self.result["attribution"]["rows"]  # the same rows as ours
        grad_scores, grad_time = gradient_baseline(plain, ref, tok, [self.rows[i] for i in seen], a.beta, a.max_length)
        self.result["attribution"]["gradient"] = {**quality(grad_scores, self.labels[seen], a.budget), **grad_time}
        self.on_stage()


def reduction(rates: dict[str, Any], name: str) -> float | None:
    """1 - (distractor compliance of ``name``) / (that of plain DPO); None when plain DPO shows none."""
    plain = rates.get("plain_dpo", {}).get("compliance_distractor")
    if name not in rates or not plain:
        return None
    return 1.0 - rates[name]["compliance_distractor"] / plain


def ability_delta(rates: dict[str, Any]) -> float | None:
    """Worst relative change of reward accuracy or mean token log-likelihood, any intervention vs plain DPO."""
    plain = rates.get("plain_dpo")
    if plain is None:
        return None
    changes = [
        (rates[a][key] - plain[key]) / abs(plain[key])
        for a in ACTIONS
        if a in rates
        for key in ("pref_acc_reward", "mean_token_ll")
        if plain[key]
    ]
    return min(changes, default=None)


def _mean(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return statistics.fmean(got) if got else None


def _spread(values: list[float | None]) -> list[float] | None:
    got = [v for v in values if v is not None]
    return [min(got), max(got)] if got else None


def summarise(args: argparse.Namespace, runs: list[dict[str, Any]], started: float) -> dict[str, Any]:
    """Headline figures (means over seeds, with min/max spread) plus every run's raw figures."""
    per_seed = []
    for run in runs:
        att, rates = run.get("attribution", {}), run["rates"]
        per_seed.append(
            {
                "reduction": {k.replace("-", "_"): reduction(rates, k) for k in ACTIONS},
                "auroc": {
                    "probe": att.get("probe", {}).get("auroc"),
                    "emergent": (att.get("emergent") or {}).get("auroc"),
                    "gradient": att.get("gradient", {}).get("auroc"),
                    "random": att.get("random", {}).get("auroc"),
                },
                "precision_at_k": {
                    "probe": att.get("probe", {}).get("precision_at_k"),
                    "emergent": (att.get("emergent") or {}).get("precision_at_k"),
                    "gradient": att.get("gradient", {}).get("precision_at_k"),
                    "random": att.get("random", {}).get("precision_at_k"),
                },
                "cost_ratio_gradient_over_ours": (
                    att["gradient"]["seconds"] / att["ours_seconds"] if "gradient" in att else None
                ),
                "alert_step": run.get("alert_step"),
                "first_rise_step": run.get("first_rise_step"),
                "general_ability_delta": ability_delta(rates),
            }
        )

    def agg(path: tuple[str, ...]) -> tuple[float | None, list[float] | None]:
        values = []
        for s in per_seed:
            v: Any = s
            for key in path:
                v = v[key]
            values.append(v)
        return _mean(values), _spread(values)

    spread: dict[str, Any] = {}
    out: dict[str, Any] = {}
    for group in ("reduction", "auroc", "precision_at_k"):
        out[group], spread[group] = {}, {}
        for key in per_seed[0][group] if per_seed else ():
            out[group][key], spread[group][key] = agg((group, key))
    for key in ("cost_ratio_gradient_over_ours", "general_ability_delta"):
        out[key], spread[key] = agg((key,))
    first = per_seed[0] if per_seed else {}
    out["alert_step"] = first.get("alert_step")
    out["first_rise_step"] = first.get("first_rise_step")
    out["seeds"] = sum(1 for run in runs if "drop-source" in run["rates"])
    out.update(
        {
            "seeds_started": len(runs),
            "spread_min_max": spread,
            "per_seed": per_seed,
            "paper": {"reduction": {"filter": 0.63, "swap": 0.78, "drop_source": 0.84}},
            "settings": {k: v for k, v in vars(args).items()},
            "machine": machine(),
            "wall_seconds": round(time.perf_counter() - started, 1),
            "runs": runs,
        }
    )
    return out


def write_partial(name: str, result: dict[str, Any]) -> None:
    """Save the figures so far without printing them (printed once, at the end)."""
    save(name, result, echo=False)


def print_table(runs: list[dict[str, Any]]) -> None:
    """Behaviour rates and general ability per model and seed."""
    print(f"{'seed':>4} {'model':<16} {'distr':>6} {'plain':>6} {'flat':>6} {'acc_raw':>7} {'acc_rw':>7} {'ll':>7}")
    for run in runs:
        for name, r in run["rates"].items():
            acc = "-" if r["pref_acc_reward"] is None else f"{r['pref_acc_reward']:.3f}"
            print(
                f"{run['seed']:>4} {name:<16} {r['compliance_distractor']:>6.2f} {r['compliance_plain']:>6.2f} "
                f"{r['flattery']:>6.2f} {r['pref_acc_raw']:>7.3f} {acc:>7} {r['mean_token_ll']:>7.3f}"
            )


def markdown_table(summary: dict[str, Any]) -> str:
    """The README's table: each model's rates as the mean over seeds with [min, max], then the headline figures."""
    runs = [run for run in summary["runs"] if "drop-source" in run["rates"]]

    def cell(name: str, key: str) -> str:
        values = [run["rates"][name][key] for run in runs if run["rates"].get(name, {}).get(key) is not None]
        if not values:
            return "-"
        mean = statistics.fmean(values)
        return f"{mean:.3f}" if len(values) == 1 else f"{mean:.3f} [{min(values):.3f}, {max(values):.3f}]"

    names = {
        "sft": "SFT start",
        "callback_paused": "DPO with the callback, at the pause",
        "plain_dpo": "plain DPO",
        "filter": "retrain after filter",
        "swap": "retrain after swap",
        "drop-source": "retrain after drop-source",
    }
    keys = ("compliance_distractor", "compliance_plain", "pref_acc_reward", "mean_token_ll")
    lines = [
        "| model | distractor compliance | plain harmful | held-out pair accuracy | mean token log-lik |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {label} | " + " | ".join(cell(name, k) for k in keys) + " |" for name, label in names.items()]
    spread = summary["spread_min_max"]
    lines.append("")
    for group in ("reduction", "auroc", "precision_at_k"):
        parts = [f"{k} {_fmt(v)}{_span(spread[group].get(k))}" for k, v in summary[group].items()]
        lines.append(f"- {group}: " + "; ".join(parts))
    for key in ("cost_ratio_gradient_over_ours", "general_ability_delta"):
        lines.append(f"- {key}: {_fmt(summary[key])}{_span(spread.get(key))}")
    steps = [(s["alert_step"], s["first_rise_step"]) for s in summary["per_seed"]]
    lines.append(f"- (alert step, first rise step) per seed: {steps}")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _span(values: list[float] | None) -> str:
    return f" [{values[0]:.3f}, {values[1]:.3f}]" if values and values[0] != values[1] else ""


def main(argv: list[str] | None = None) -> None:
    """Run every seed, saving ``organism.json`` after each stage."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=59, help="59: one epoch")
    parser.add_argument("--quick", action="store_true", help="smoke test: 3 prompts a kind, 8 clean pairs")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--probe-every", type=int, default=10)
    parser.add_argument("--watch-per-kind", type=int, default=10)
    parser.add_argument("--budget", type=int, default=30, help="rows filtered or swapped (30 rows are planted)")
    parser.add_argument("--threads", type=int, default=1, help="2 threads are far slower on a shared CPU")
    parser.add_argument("--work", default=None, help="folder for the runs (default: a temporary one)")
    parser.add_argument("--out", default="organism.json", help="file name under benchmarks/results/")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        for seed in range(args.seeds):
            run = Run(args, seed, work, lambda: write_partial(args.out, summarise(args, runs, started)))
            runs.append(run.result)
            run.execute()
            del run
            gc.collect()
    print_table(runs)
    summary = summarise(args, runs, started)
    save(args.out, summary)
    print(markdown_table(summary))


if __name__ == "__main__":
    main()
