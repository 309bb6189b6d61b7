"""Tests for the model-side measurements of the probe pass (tiny random models, CPU)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Olmo2Config,
    Olmo2ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from probe_callback.capture.blocks import (
    check_layers,
    default_layer,
    find_decoder_blocks,
    layer_count,
    record_block_outputs,
)
from probe_callback.scoring.probing import (
    encode_response,
    format_prompt,
    greedy_responses,
    greedy_traced,
    novelty,
    response_means,
    teacher_forced,
)

PROMPTS = ["hi there", "the cat likes a poem", "write some code for the robot please"]


class FakePeft(nn.Module):
    """Mimics a PEFT wrapper: forwards to the base model and exposes `get_base_model()`."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base_model = base

    def get_base_model(self) -> nn.Module:
        return self.base_model

    def get_input_embeddings(self) -> nn.Module:
        return self.base_model.get_input_embeddings()

    def forward(self, **kwargs):
        return self.base_model(**kwargs)


@pytest.fixture(scope="module")
def prompts(tiny_tokenizer) -> list[list[int]]:
    return [format_prompt(tiny_tokenizer, p) for p in PROMPTS]


def _hand_states(model, prompt: list[int], response: list[int], layer: int) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=torch.tensor([prompt + response]), output_hidden_states=True)
    return out.hidden_states[layer][0, len(prompt) :]


def test_layer_count_default_layer_and_range(tiny_model_factory):
    model = tiny_model_factory()
    assert layer_count(model) == 4
    assert default_layer(model) == 2
    check_layers(model, [1, 3])
    for bad in ([0], [4], [2, 2]):
        with pytest.raises(ValueError, match="LlamaForCausalLM|Duplicate"):
            check_layers(model, bad)


@pytest.mark.parametrize(
    ("config", "cls"),
    [
        (GPT2Config(n_embd=16, n_layer=3, n_head=2, vocab_size=50), GPT2LMHeadModel),
        (
            GPTNeoXConfig(hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32),
            GPTNeoXForCausalLM,
        ),
        (
            Qwen2Config(hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32),
            Qwen2ForCausalLM,
        ),
        (
            MistralConfig(hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32),
            MistralForCausalLM,
        ),
        (
            Olmo2Config(hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32),
            Olmo2ForCausalLM,
        ),
    ],
)
def test_finds_blocks_of_common_architectures(config, cls):
    config.vocab_size = 50
    assert layer_count(cls(config)) == 3


def test_finds_blocks_through_wrappers_and_names_unknown_models(tiny_model_factory):
    model = tiny_model_factory()
    blocks = model.model.layers
    assert find_decoder_blocks(nn.DataParallel(model)) is blocks
    assert find_decoder_blocks(FakePeft(model)) is blocks
    with pytest.raises(ValueError, match="Linear"):
        layer_count(nn.Linear(2, 2))


@pytest.mark.parametrize("wrap", [lambda m: m, FakePeft, nn.DataParallel])
def test_teacher_forced_matches_hidden_states_and_logprobs(tiny_model_factory, tiny_tokenizer, prompts, wrap):
    model = tiny_model_factory()
    responses = [encode_response(tiny_tokenizer, r) for r in ["sure", "the dog reads a map", "ok then."]]
    traces = teacher_forced(wrap(model), prompts, responses, layers=[1, 3], batch_size=2)
    for prompt, response, trace in zip(prompts, responses, traces, strict=True):
        assert trace.hidden.shape == (2, len(response), 32) and trace.hidden.dtype == torch.float32
        for k, layer in enumerate([1, 3]):
            torch.testing.assert_close(trace.hidden[k], _hand_states(model, prompt, response, layer))
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + response])).logits[0]
        expected = torch.log_softmax(logits[len(prompt) - 1 : -1], -1)[torch.arange(len(response)), response]
        torch.testing.assert_close(trace.logprobs, expected)
        torch.testing.assert_close(trace.mean(), trace.hidden.mean(dim=1))
        with torch.no_grad():
            states = model(input_ids=torch.tensor([prompt + response]), output_hidden_states=True).hidden_states
        torch.testing.assert_close(
            trace.prompt_mean, torch.stack([states[i][0, : len(prompt)].mean(0) for i in (1, 3)])
        )


def test_vocab_best_opening_closing_and_final_read_every_token(tiny_model_factory, tiny_tokenizer, prompts):
    """``best``: each token's largest log-prob over the positions that predict the response and the one
    after it; ``opening``: its log-prob as the response's first token; ``closing``: right after its last;
    ``final``: in place of its last."""
    model = tiny_model_factory()
    responses = [encode_response(tiny_tokenizer, r) for r in ["sure", "the dog reads a map", "ok then."]]
    traces = teacher_forced(model, prompts, responses, layers=[], batch_size=2, vocab_best=True)
    for prompt, response, trace in zip(prompts, responses, traces, strict=True):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + response])).logits[0]
        every = torch.log_softmax(logits[len(prompt) - 1 :].float(), -1)
        torch.testing.assert_close(trace.opening.float(), every[0], atol=1e-2, rtol=1e-3)
        torch.testing.assert_close(trace.closing.float(), every[len(response)], atol=1e-2, rtol=1e-3)
        torch.testing.assert_close(trace.final.float(), every[len(response) - 1], atol=1e-2, rtol=1e-3)
        assert float(trace.final[response[-1]]) == pytest.approx(float(trace.logprobs[-1]), abs=1e-2)
        torch.testing.assert_close(trace.best.float(), every.max(0).values, atol=1e-2, rtol=1e-3)
        assert float(trace.opening[response[0]]) == pytest.approx(float(trace.logprobs[0]), abs=1e-2)


def test_teacher_forced_gpt2_tuple_outputs():
    model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=3, n_head=2, vocab_size=50)).eval()
    [trace] = teacher_forced(model, [[1, 2, 3]], [[4, 5]], layers=[2])
    torch.testing.assert_close(trace.hidden[0], _hand_states(model, [1, 2, 3], [4, 5], 2))


def test_greedy_is_deterministic_and_restores_modes(tiny_model_factory, tiny_tokenizer, prompts):
    model = tiny_model_factory().train()
    model.model.norm.eval()
    model.config.use_cache = False
    flags = {name: m.training for name, m in model.named_modules()}
    batched = greedy_responses(model, tiny_tokenizer, prompts, max_new_tokens=6, batch_size=3)
    single = greedy_responses(model, tiny_tokenizer, prompts, max_new_tokens=6, batch_size=1)
    assert batched == single
    assert all(0 < len(r) <= 6 for r in batched)
    assert {name: m.training for name, m in model.named_modules()} == flags
    assert model.config.use_cache is False


def test_greedy_traced_matches_teacher_forcing(tiny_model_factory, tiny_tokenizer, prompts):
    """The generation's own log-probs and prompt activations equal a teacher-forced pass (one pass saved)."""
    model = tiny_model_factory()
    responses, traces = greedy_traced(model, tiny_tokenizer, prompts, [1, 3], max_new_tokens=6, batch_size=2)
    assert responses == greedy_responses(model, tiny_tokenizer, prompts, max_new_tokens=6, batch_size=3)
    forced = teacher_forced(model, prompts, responses, [1, 3])
    for got, want in zip(traces, forced, strict=True):
        assert got.length == want.length > 0
        torch.testing.assert_close(got.logprobs, want.logprobs, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got.prompt_mean, want.prompt_mean, atol=1e-4, rtol=1e-4)


def test_greedy_stops_at_eos_and_empty_responses_are_flagged(tiny_model_factory, tiny_tokenizer, prompts):
    model = tiny_model_factory()
    eos = tiny_tokenizer.eos_token_id

    def force_eos(_module, _inputs, logits):
        return logits + 100.0 * nn.functional.one_hot(torch.tensor(eos), logits.shape[-1])

    handle = model.lm_head.register_forward_hook(force_eos)
    responses = greedy_responses(model, tiny_tokenizer, prompts, max_new_tokens=5, batch_size=2)
    handle.remove()
    assert responses == [[], [], []]
    traces = teacher_forced(model, prompts, [[], [7, 8], []], layers=[2])
    assert [t.length for t in traces] == [0, 2, 0]
    means, valid = response_means(traces)
    assert means.shape == (3, 1, 32) and valid.tolist() == [False, True, False]
    assert torch.isnan(means[0]).all() and not torch.isnan(means[1]).any()


def test_hooks_removed_after_exceptions(tiny_model_factory):
    model = tiny_model_factory()
    blocks = find_decoder_blocks(model)
    with pytest.raises(IndexError), record_block_outputs(model, [1, 2]):
        assert all(len(b._forward_hooks) == 1 for b in blocks[:2])
        raise IndexError("boom")
    assert all(not b._forward_hooks for b in blocks)
    with pytest.raises(IndexError):
        teacher_forced(model, [[1, 2]], [[10_000]], layers=[1, 2])  # token id outside the vocabulary
    assert all(not b._forward_hooks for b in blocks)


def test_novelty(tiny_model_factory, tiny_tokenizer, prompts):
    model, other = tiny_model_factory(), tiny_model_factory(seed=1)
    responses = [encode_response(tiny_tokenizer, "the cat cooks")] * 3
    current = teacher_forced(other, prompts, responses, layers=[])
    reference = teacher_forced(model, prompts, responses, layers=[])
    rise = novelty(current[0], reference[0])
    torch.testing.assert_close(rise, current[0].logprobs - reference[0].logprobs)
    assert novelty(reference[1], reference[1]).abs().max() == 0
    short = teacher_forced(model, prompts[:1], [responses[0][:1]], layers=[])[0]
    with pytest.raises(ValueError, match="same response"):
        novelty(short, reference[0])


def test_format_prompt_with_and_without_chat_template(tiny_tokenizer):
    messages = [{"role": "user", "content": "hi there"}]
    text = tiny_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|assistant|>")
    assert format_prompt(tiny_tokenizer, "hi there") == tiny_tokenizer(text, add_special_tokens=False).input_ids
    assert format_prompt(tiny_tokenizer, messages) == format_prompt(tiny_tokenizer, "hi there")
    plain = copy.deepcopy(tiny_tokenizer)
    plain.chat_template = None
    assert format_prompt(plain, "hi there") == plain("hi there").input_ids


def test_bad_inputs_raise_clear_errors(tiny_model_factory, tiny_tokenizer):
    model = tiny_model_factory()
    with pytest.raises(ValueError, match="no tokens"):
        greedy_responses(model, tiny_tokenizer, [[1], []], max_new_tokens=2)
    with pytest.raises(ValueError, match="one response each"):
        teacher_forced(model, [[1]], [], layers=[1])
    with pytest.raises(ValueError, match="out of range"):
        teacher_forced(model, [[1]], [[2]], layers=[4])
