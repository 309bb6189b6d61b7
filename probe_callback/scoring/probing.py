"""What the checkpoint probe pass computes from a model: prompts, greedy responses, teacher-forced traces.

Layers are HF ``hidden_states`` indices (see :mod:`probe_callback.capture.blocks`). Every function here is
pure over the model it is given (eval mode and ``torch.no_grad()`` inside, each submodule's mode and
``config.use_cache`` restored after), so a PEFT model whose adapter the caller toggles can serve as
both the current and the reference model.

Example:
    >>> prompts = [format_prompt(tok, "Say hi"), format_prompt(tok, "Tell me a story")]
    >>> r0 = greedy_responses(ref_model, tok, prompts, max_new_tokens=8)       # M0's answers
    >>> rt = greedy_responses(model, tok, prompts, max_new_tokens=8)           # the current model's
    >>> before, after = (teacher_forced(ref_model, prompts, r, layers=[2]) for r in (r0, rt))
    >>> change = response_means(after)[0] - response_means(before)[0]         # behaviour-change vectors
    >>> change.shape                                                           # (prompts, layers, H)
    torch.Size([2, 1, 32])
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import LogitsProcessor, LogitsProcessorList

from ..capture.blocks import check_layers, record_block_outputs, unwrap_parallel


@contextmanager
def inference_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and `torch.no_grad()`; restores every submodule's train flag and `config.use_cache`.

    Example:
        >>> with inference_mode(model):
        ...     logits = model(torch.tensor([[5, 6, 7]])).logits
        >>> model.training, logits.requires_grad
        (False, False)
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


def format_prompt(tokenizer: Any, prompt: str | list[dict[str, str]], chat: bool = True) -> list[int]:
    """Token ids of a prompt as the model sees it before answering, tokenized as TRL tokenizes training prompts.

    A message list: the chat template with ``add_generation_prompt=True`` (without a template, the messages'
    contents joined by newlines). A string: with ``chat`` (conversational training data), one user message;
    without (TRL's standard format, where prompts are plain text), the text with the tokenizer's special
    tokens, as TRL tokenizes a text prompt.

    Example:
        >>> format_prompt(tok, "Hi") == format_prompt(tok, [{"role": "user", "content": "Hi"}])
        True
        >>> tok.decode(format_prompt(tok, "Q: Hi A:", chat=False), skip_special_tokens=True)
        'Q: Hi A:'
    """
    if isinstance(prompt, str) and not chat:
        return list(tokenizer(prompt).input_ids)
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(tokenizer(text, add_special_tokens=False).input_ids)
    text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
    return list(tokenizer(text).input_ids)


def encode_response(tokenizer: Any, response: str) -> list[int]:
    """Token ids of a response as it follows `format_prompt` (no special tokens, no eos), like a greedy reply.

    Example:
        >>> tok.decode(encode_response(tok, "Four."))
        'Four.'
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
        >>> [len(r) <= 16 for r in greedy_responses(model, tok, [format_prompt(tok, "Hi")], max_new_tokens=16)]
        [True]
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
    net: Any = unwrap_parallel(model)  # an HF causal LM: generate(), get_input_embeddings()
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
            new, logprobs = _generate(net, input_ids, mask, max_new_tokens, pad, eos)
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


def _generate(
    net: Any, input_ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, pad: int, eos: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy new tokens (B, T) of a left-padded batch and the log-probability of each (B, T)."""
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
    return out[:, input_ids.shape[1] :], torch.stack(chosen.steps, dim=1)


@dataclass(frozen=True)
class ResponseTrace:
    """Teacher-forced view of one (prompt, response) pair through one model.

    `hidden`: (n_layers, T, H) float32 CPU hidden states of the T response tokens at `layers`;
    `logprobs`: (T,) float32 log-probability of each response token given everything before it;
    `prompt_mean`: (n_layers, H) mean hidden state over the prompt tokens (NaN for an empty response,
    which gets no forward), so prompt drift between two models needs no pass of its own;
    `best` (with ``vocab_best``): (V,) float16, each vocabulary token's largest log-probability over
    the positions that predict a response token and the one after it (None for an empty response);
    `opening` (with ``vocab_best``): (V,) float16, each token's log-probability as the response's first;
    `closing` (with ``vocab_best``): (V,) float16, each token's log-probability right after the response's last;
    `final` (with ``vocab_best``): (V,) float16, each token's log-probability in place of the response's last.
    """

    layers: tuple[int, ...]
    hidden: torch.Tensor
    logprobs: torch.Tensor
    prompt_mean: torch.Tensor
    best: torch.Tensor | None = None
    opening: torch.Tensor | None = None
    closing: torch.Tensor | None = None
    final: torch.Tensor | None = None

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
    vocab_best: bool = False,
) -> list[ResponseTrace]:
    """One forward per (prompt, response) pair (right-padded batches): response-token states and log-probs.

    `layers` may be empty (log-probs only). Empty responses give a trace of length 0 without a forward.
    ``vocab_best``: also each vocabulary token's best log-prob over the response and its log-prob as the
    response's first token, right after its last and in place of its last (``ResponseTrace.best``, ``.opening``,
    ``.closing``, ``.final``).

    Example:
        >>> [t] = teacher_forced(ref_model, [format_prompt(tok, "Hi")], [encode_response(tok, "Hello")], [2])
        >>> t.hidden.shape[0] == 1 and t.hidden.shape[1] == t.logprobs.shape[0] == t.length
        True
    """
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(response_ids)} responses: pass one response each.")
    _check_prompts(prompt_ids)
    net: Any = unwrap_parallel(model)  # an HF causal LM: get_input_embeddings()
    hidden_size = net.get_input_embeddings().embedding_dim
    device = _device(net)
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
        for start in range(0, len(todo), batch_size):
            rows = todo[start : start + batch_size]
            seqs = [list(prompt_ids[i]) + list(response_ids[i]) for i in rows]
            width = max(len(s) for s in seqs)
            input_ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs], device=device)
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
            # Logits only from the earliest position that predicts a response token (the lm head is costly).
            first = min(len(prompt_ids[i]) for i in rows) - 1
            logits = net(input_ids=input_ids, attention_mask=mask, use_cache=False, **_keep(net, width - first)).logits
            offset = width - logits.shape[1]
            for b, i in enumerate(rows):
                p, t = len(prompt_ids[i]), len(response_ids[i])
                all_logprobs = torch.log_softmax(logits[b, p - 1 - offset : p + t - offset].float(), dim=-1)
                logprobs = all_logprobs[:t].gather(1, input_ids[b, p : p + t, None])[:, 0]
                vocab = _vocab_views(all_logprobs, t) if vocab_best else []
                states = torch.stack([acts[layer][b] for layer in layers]).float() if layers else None
                hidden = states[:, p : p + t].cpu() if states is not None else torch.zeros(0, t, hidden_size)
                prompt = states[:, :p].mean(dim=1).cpu() if states is not None else torch.zeros(0, hidden_size)
                traces[i] = ResponseTrace(tuple(layers), hidden, logprobs.cpu(), prompt, *vocab)
    return [trace for trace in traces if trace is not None]


def _vocab_views(logprobs: torch.Tensor, t: int) -> list[torch.Tensor]:
    """From the (t + 1, V) log-probs of a t-token response's positions: every token's best log-prob over the
    response, as its first token, right after its last and in place of its last (float16, CPU)."""
    views = (logprobs.max(dim=0).values, logprobs[0], logprobs[t], logprobs[t - 1])
    return [x.half().cpu() for x in views]


def _keep(model: nn.Module, n: int) -> dict[str, int]:
    """``logits_to_keep=n`` when the model's forward takes it (most HF causal LMs), else nothing."""
    return {"logits_to_keep": n} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def response_means(traces: Sequence[ResponseTrace]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked `a_L` of the traces: (n, n_layers, H) float32, NaN rows for empty responses; (n,) valid mask.

    Example:
        >>> traces = teacher_forced(model, [format_prompt(tok, "Hi")] * 2, [encode_response(tok, "Hello"), []], [2])
        >>> means, valid = response_means(traces)
        >>> means.shape, valid.tolist()
        (torch.Size([2, 1, 32]), [True, False])
    """
    means = torch.stack([trace.mean() for trace in traces])
    return means, torch.tensor([trace.length > 0 for trace in traces])


def novelty(current: ResponseTrace, reference: ResponseTrace) -> torch.Tensor:
    """Per-token log-prob rise of the same response tokens, current model minus reference: (T,).

    Example:
        >>> p, r = [format_prompt(tok, "Hi")], [encode_response(tok, "Hello there")]
        >>> rise = novelty(teacher_forced(model, p, r, [])[0], teacher_forced(ref_model, p, r, [])[0])
        >>> rise.shape == (len(r[0]),)
        True
    """
    if current.length != reference.length:
        raise ValueError(
            f"Traces of {current.length} and {reference.length} tokens: novelty needs the same response "
            "teacher-forced through both models."
        )
    return current.logprobs - reference.logprobs
