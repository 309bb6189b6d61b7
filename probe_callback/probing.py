"""What the checkpoint probe pass computes from a model: prompts, greedy responses, teacher-forced traces.

Layer convention: layer `L` is HF `hidden_states[L]`, the output of decoder block `L - 1`, for
`1 <= L < layer_count(model)`. The last entry of `hidden_states` is taken after the final norm, so it is
not offered. Every function here is pure over the model it is given (eval mode and `torch.no_grad()`
inside, each submodule's mode and `config.use_cache` restored after), so a PEFT model whose adapter
the caller toggles can serve as both the current and the reference model.

Example:
    >>> prompts = [format_prompt(tok, "Say hi")]
    >>> r0 = greedy_responses(ref_model, tok, prompts, max_new_tokens=32, batch_size=8)
    >>> traces = teacher_forced(ref_model, prompts, r0, layers=[default_layer(ref_model)], batch_size=8)
    >>> means, valid = response_means(traces)          # (1, 1, H) float32, (1,) bool
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from accelerate.utils import extract_model_from_parallel
from torch import nn
from transformers import LogitsProcessor, LogitsProcessorList

# Attribute paths to the decoder block list, covering llama/qwen/mistral/olmo/gemma ("model.layers"),
# gpt2 ("transformer.h"), gpt-neox ("gpt_neox.layers"), multimodal wrappers and bare base models.
_BLOCK_PATHS = (
    "model.layers",
    "model.language_model.layers",
    "language_model.model.layers",
    "model.decoder.layers",
    "transformer.h",
    "transformer.blocks",
    "gpt_neox.layers",
    "layers",
    "h",
    "decoder.layers",
)


def _unwrap_parallel(model: nn.Module) -> nn.Module:
    """Strip DDP/DataParallel/FSDP/DeepSpeed/compile wrappers; keep PEFT (its adapter must apply)."""
    return extract_model_from_parallel(model)


def find_decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of a causal LM (also through DDP-style and PEFT wrappers).

    Example:
        >>> len(find_decoder_blocks(model)) == model.config.num_hidden_layers
        True
    """
    inner = _unwrap_parallel(model)
    get_base = getattr(inner, "get_base_model", None)
    if callable(get_base):
        inner = get_base()
    for path in _BLOCK_PATHS:
        node: Any = inner
        for part in path.split("."):
            node = getattr(node, part, None)
        if isinstance(node, nn.ModuleList) and len(node) > 0:
            return node
    raise ValueError(
        f"Cannot find the decoder blocks of {type(inner).__name__}: looked for "
        f"{', '.join(_BLOCK_PATHS)}. Use a llama/qwen/mistral/olmo/gpt2/gpt-neox-style causal LM."
    )


def layer_count(model: nn.Module) -> int:
    """Number of decoder blocks; valid probe layers are `1 .. layer_count(model) - 1`.

    Example:
        >>> layer_count(tiny_llama_with_4_blocks)
        4
    """
    return len(find_decoder_blocks(model))


def default_layer(model: nn.Module) -> int:
    """The paper's choice, about 60% of the depth (OLMo 2 7B: 20 of 32), clamped to the valid range.

    Example:
        >>> default_layer(olmo2_7b)
        19
    """
    n = layer_count(model)
    return min(max(1, round(0.6 * n)), n - 1)


def check_layers(model: nn.Module, layers: Sequence[int]) -> None:
    """Raise a `ValueError` naming the model unless every layer is distinct and in `1 .. layer_count - 1`.

    Example:
        >>> check_layers(model, [2, 3])
    """
    n = layer_count(model)
    if len(set(layers)) != len(layers):
        raise ValueError(f"Duplicate layers in {list(layers)}: list each layer once.")
    bad = [layer for layer in layers if not (isinstance(layer, numbers.Integral) and 1 <= layer < n)]
    if bad:
        raise ValueError(
            f"Layers {bad} are out of range for {type(_unwrap_parallel(model)).__name__} with {n} decoder "
            f"blocks: use 1..{n - 1} (layer L = hidden_states[L]; the final, post-norm state is not offered)."
        )


@contextmanager
def record_block_outputs(
    model: nn.Module, layers: Sequence[int], first_only: bool = False
) -> Iterator[dict[int, torch.Tensor]]:
    """Forward hooks filling `{layer: hidden states (B, S, H)}` on each forward; always removed on exit.

    `first_only`: keep the first forward's states (e.g. a generation's prompt pass) until cleared.

    Example:
        >>> with record_block_outputs(model, [2]) as acts:
        ...     model(input_ids)
        >>> acts[2].shape                              # (B, S, H), detached
    """
    check_layers(model, layers)
    blocks = find_decoder_blocks(model)
    store: dict[int, torch.Tensor] = {}

    def hook_for(layer: int):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if not (first_only and layer in store):
                store[layer] = (output[0] if isinstance(output, tuple) else output).detach()

        return hook

    handles = [blocks[layer - 1].register_forward_hook(hook_for(layer)) for layer in layers]
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def inference_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and `torch.no_grad()`; restores every submodule's train flag and `config.use_cache`.

    Example:
        >>> with inference_mode(model):
        ...     logits = model(input_ids).logits
    """
    flags = [(module, module.training) for module in model.modules()]
    config = getattr(model, "config", None)
    use_cache = getattr(config, "use_cache", None)
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, flag in flags:
            module.training = flag
        if config is not None and use_cache is not None:
            config.use_cache = use_cache


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("The tokenizer has neither a pad nor an eos token: set tokenizer.pad_token.")
    return int(pad)


def _eos_ids(tokenizer: Any, model: nn.Module) -> list[int]:
    """Tokenizer eos plus the model's generation-config eos ids (chat models often add end-of-turn)."""
    ids = {tokenizer.eos_token_id}
    generation_config = getattr(model, "generation_config", None)
    model_eos = getattr(generation_config, "eos_token_id", None)
    ids.update(model_eos if isinstance(model_eos, list) else [model_eos])
    return sorted(int(i) for i in ids if i is not None)


def _check_prompts(prompt_ids: Sequence[Sequence[int]]) -> None:
    empty = [i for i, ids in enumerate(prompt_ids) if len(ids) == 0]
    if empty:
        raise ValueError(f"Prompts {empty} have no tokens: every prompt needs at least one token.")


def format_prompt(tokenizer: Any, prompt: str | list[dict[str, str]]) -> list[int]:
    """Token ids of a prompt as the model sees it before answering.

    With a chat template: the template with `add_generation_prompt=True` (a string becomes one user
    message). Without: plain text with the tokenizer's special tokens (as TRL tokenizes text prompts);
    a message list is then joined by newlines.

    Example:
        >>> format_prompt(tok, "What is 2 + 2?")                      # list[int]
        >>> format_prompt(tok, [{"role": "user", "content": "Hi"}])
    """
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(tokenizer(text, add_special_tokens=False).input_ids)
    text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
    return list(tokenizer(text).input_ids)


def encode_response(tokenizer: Any, response: str) -> list[int]:
    """Token ids of a response as it follows `format_prompt` (no special tokens, no eos), like a greedy reply.

    Example:
        >>> encode_response(tok, "Four.")
    """
    return list(tokenizer(response, add_special_tokens=False).input_ids)


def greedy_responses(
    model: nn.Module,
    tokenizer: Any,
    prompt_ids: Sequence[Sequence[int]],
    max_new_tokens: int = 64,
    batch_size: int = 8,
) -> list[list[int]]:
    """Greedy continuation of each prompt, batched with left padding; deterministic.

    Returns one token list per prompt, cut before the first eos (tokenizer eos or the model's
    generation-config eos); it may be empty when eos comes first.

    Example:
        >>> greedy_responses(model, tok, [format_prompt(tok, "Hi")], max_new_tokens=16, batch_size=8)
    """
    return greedy_traced(model, tokenizer, prompt_ids, [], max_new_tokens, batch_size)[0]


class _ChosenLogProbs(LogitsProcessor):
    """Keeps, at each generation step, the log-probability of the greedy (highest-scoring) token.

    O(batch) per step, where keeping every step's logits would hold batch x vocab floats per step.
    """

    def __init__(self) -> None:
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.steps.append(torch.log_softmax(scores.float(), dim=-1).max(dim=-1).values)
        return scores


def greedy_traced(
    model: nn.Module,
    tokenizer: Any,
    prompt_ids: Sequence[Sequence[int]],
    layers: Sequence[int],
    max_new_tokens: int = 64,
    batch_size: int = 8,
) -> tuple[list[list[int]], list[ResponseTrace]]:
    """Greedy responses plus, from the same generation (no extra forward), each one's trace.

    The traces carry the per-token log-probs of the response under ``model`` and its prompt-token
    mean at ``layers``; their ``hidden`` keeps no response tokens (shape (n_layers, 0, H)): teacher-force
    the response through a model for those.

    Example:
        >>> rt, traces = greedy_traced(model, tok, [format_prompt(tok, "Hi")], [2], max_new_tokens=16)
        >>> traces[0].logprobs.shape == (len(rt[0]),)
        True
    """
    _check_prompts(prompt_ids)
    net = _unwrap_parallel(model)
    check_layers(net, layers)
    pad, eos = _pad_id(tokenizer), _eos_ids(tokenizer, net)
    device, hidden_size = _device(net), net.get_input_embeddings().embedding_dim
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))  # less padding
    responses: list[list[int]] = [[] for _ in prompt_ids]
    traces: list[ResponseTrace | None] = [None for _ in prompt_ids]
    with inference_mode(net), record_block_outputs(net, layers, first_only=True) as prefill:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = [list(prompt_ids[i]) for i in rows]
            width = max(len(ids) for ids in batch)
            input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch], device=device)
            mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=device)
            prefill.clear()  # the prompt pass of this batch's generation fills it
            chosen = _ChosenLogProbs()
            out = net.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=pad,
                eos_token_id=eos,
                use_cache=True,
                logits_processor=LogitsProcessorList([chosen]),
            )
            new = out[:, width:]
            logprobs = torch.stack(chosen.steps, dim=1)
            for b, (i, row) in enumerate(zip(rows, new.tolist(), strict=True)):
                cut = next((j for j, token in enumerate(row) if token in eos), len(row))
                responses[i] = row[:cut]
                p = len(prompt_ids[i])
                prompt = (
                    torch.stack([prefill[layer][b, width - p :].float().mean(dim=0) for layer in layers]).cpu()
                    if layers
                    else torch.zeros(0, hidden_size)
                )
                traces[i] = ResponseTrace(
                    tuple(int(x) for x in layers),
                    torch.zeros(len(layers), 0, hidden_size),
                    logprobs[b, :cut].cpu(),
                    prompt,
                )
    return responses, [trace for trace in traces if trace is not None]


@dataclass(frozen=True)
class ResponseTrace:
    """Teacher-forced view of one (prompt, response) pair through one model.

    `hidden`: (n_layers, T, H) float32 CPU hidden states of the T response tokens at `layers`;
    `logprobs`: (T,) float32 log-probability of each response token given everything before it;
    `prompt_mean`: (n_layers, H) mean hidden state over the prompt tokens (NaN for an empty response,
    which gets no forward), so prompt drift between two models needs no pass of its own.
    """

    layers: tuple[int, ...]
    hidden: torch.Tensor
    logprobs: torch.Tensor
    prompt_mean: torch.Tensor

    @property
    def length(self) -> int:
        """Number of response tokens T (0 for an empty response)."""
        return int(self.logprobs.shape[0])

    def mean(self) -> torch.Tensor:
        """`a_L(p, r; M)` for every layer: (n_layers, H); NaN when the response is empty."""
        if self.length == 0:
            return torch.full(self.hidden.shape[::2], float("nan"))
        return self.hidden.mean(dim=1)


def teacher_forced(
    model: nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    layers: Sequence[int],
    batch_size: int = 8,
) -> list[ResponseTrace]:
    """One forward per (prompt, response) pair (right-padded batches): response-token states and log-probs.

    `layers` may be empty (log-probs only). Empty responses give a trace of length 0 without a forward.

    Example:
        >>> [t] = teacher_forced(ref_model, [format_prompt(tok, "Hi")], [encode_response(tok, "Hello")], [2])
        >>> t.hidden.shape, t.logprobs.shape               # (1, T, H), (T,)
    """
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(response_ids)} responses: pass one response each.")
    _check_prompts(prompt_ids)
    net = _unwrap_parallel(model)
    hidden_size = net.get_input_embeddings().embedding_dim
    check_layers(net, layers)
    layers = [int(layer) for layer in layers]
    empty = ResponseTrace(
        tuple(layers),
        torch.zeros(len(layers), 0, hidden_size),
        torch.zeros(0),
        torch.full((len(layers), hidden_size), float("nan")),
    )
    traces: list[ResponseTrace | None] = [None if len(r) else empty for r in response_ids]
    todo = sorted(
        (i for i, trace in enumerate(traces) if trace is None),
        key=lambda i: len(prompt_ids[i]) + len(response_ids[i]),
    )
    with inference_mode(net), record_block_outputs(net, layers) as acts:
        for rows, input_ids, logits, offset in _padded_forwards(net, prompt_ids, response_ids, todo, batch_size):
            for b, i in enumerate(rows):
                p, t = len(prompt_ids[i]), len(response_ids[i])
                step_logits = logits[b, p - 1 - offset : p + t - 1 - offset].float()
                targets = input_ids[b, p : p + t]
                logprobs = torch.log_softmax(step_logits, dim=-1).gather(1, targets[:, None])[:, 0]
                states = torch.stack([acts[layer][b] for layer in layers]).float() if layers else None
                hidden = states[:, p : p + t].cpu() if layers else torch.zeros(0, t, hidden_size)
                prompt = states[:, :p].mean(dim=1).cpu() if layers else torch.zeros(0, hidden_size)
                traces[i] = ResponseTrace(tuple(layers), hidden, logprobs.cpu(), prompt)
    return [trace for trace in traces if trace is not None]


def _padded_forwards(
    net: nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    todo: Sequence[int],
    batch_size: int,
) -> Iterator[tuple[Sequence[int], torch.Tensor, torch.Tensor, int]]:
    """Forwards of the (prompt + response) pairs ``todo`` in right-padded batches: yields the batch's
    pair indices, input ids, logits and the logits' offset (they start at the earliest position that
    predicts a response token: the lm head is costly)."""
    device = _device(net)
    for start in range(0, len(todo), batch_size):
        rows = todo[start : start + batch_size]
        seqs = [list(prompt_ids[i]) + list(response_ids[i]) for i in rows]
        width = max(len(s) for s in seqs)
        input_ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs], device=device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
        first = min(len(prompt_ids[i]) for i in rows) - 1
        logits = net(input_ids=input_ids, attention_mask=mask, use_cache=False, **_keep(net, width - first)).logits
        yield rows, input_ids, logits, width - logits.shape[1]


def _keep(model: nn.Module, n: int) -> dict[str, int]:
    """``logits_to_keep=n`` when the model's forward takes it (most HF causal LMs), else nothing."""
    return {"logits_to_keep": n} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def response_means(traces: Sequence[ResponseTrace]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked `a_L` of the traces: (n, n_layers, H) float32, NaN rows for empty responses; (n,) valid mask.

    Example:
        >>> means, valid = response_means(traces)
        >>> v_b = means_t - means_0                        # behaviour-change vectors; NaN where invalid
    """
    means = torch.stack([trace.mean() for trace in traces])
    return means, torch.tensor([trace.length > 0 for trace in traces])


def novelty(current: ResponseTrace, reference: ResponseTrace) -> torch.Tensor:
    """Per-token log-prob rise of the same response tokens, current model minus reference: (T,).

    Example:
        >>> rise = novelty(teacher_forced(model, p, r, [])[0], teacher_forced(ref, p, r, [])[0])
    """
    if current.length != reference.length:
        raise ValueError(
            f"Traces of {current.length} and {reference.length} tokens: novelty needs the same response "
            "teacher-forced through both models."
        )
    return current.logprobs - reference.logprobs


def best_logprobs(
    model: nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    token_ids: Sequence[int],
    batch_size: int = 8,
) -> np.ndarray:
    """(n, K): each token's largest log-probability over the positions of each teacher-forced response
    (every position that predicts a response token, and the one after it): the best chance the
    response gives that token. One forward per pair, logits only where needed.

    Example:
        >>> best_logprobs(model, [format_prompt(tok, "Hi")], [encode_response(tok, "Hello")], [42, 7]).shape
        (1, 2)
    """
    _check_prompts(prompt_ids)
    net = _unwrap_parallel(model)
    ids = torch.tensor(list(token_ids), dtype=torch.long, device=_device(net))
    out = np.full((len(prompt_ids), len(ids)), -np.inf, dtype=np.float32)
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]) + len(response_ids[i]))
    with inference_mode(net):
        for rows, _, logits, offset in _padded_forwards(net, prompt_ids, response_ids, order, batch_size):
            for b, i in enumerate(rows):
                p, t = len(prompt_ids[i]), len(response_ids[i])
                step_logits = logits[b, p - 1 - offset : p + t - offset].float()
                picked = step_logits[:, ids] - torch.logsumexp(step_logits, dim=-1, keepdim=True)
                out[i] = picked.max(dim=0).values.cpu().numpy()
    return out
