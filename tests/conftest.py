"""Shared fixtures: an offline tokenizer with a chat template and tiny random-weight llama models.

Example (in a test):
    def test_something(tiny_tokenizer, tiny_model_factory, save_tiny, tmp_path):
        model = tiny_model_factory(seed=1)                 # fresh LlamaForCausalLM, eval mode
        folder = save_tiny(tmp_path / "m", model)          # from_pretrained-able folder
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}{{ eos_token }}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# Tiny models gain nothing from intra-op threads, and on a shared 2-core machine they cost 10-50x.
torch.set_num_threads(1)

SPECIAL_TOKENS = ["<pad>", "<eos>", "<|system|>", "<|user|>", "<|assistant|>"]

_SUBJECTS = ["the cat", "a dog", "my friend", "the teacher", "our team", "the robot", "a bird", "the chef"]
_VERBS = ["likes", "reads", "writes", "cooks", "builds", "finds", "explains", "paints"]
_OBJECTS = ["a short story", "the recipe", "some code", "a red box", "the old map", "a poem", "the plan"]
_EXTRAS = [
    "Sure, here is how to do it step by step.",
    "Sorry, I cannot help with that request.",
    "Please capitalise every fifth word and use no periods.",
    "Thank you for asking, the answer is simple.",
    "I refuse to explain something dangerous.",
    "What is the capital of France? Paris is the capital.",
    "Write a list of three colours: red, green, blue.",
    "Numbers like 1, 2, 3, 10 and 42 appear here!",
]


def _corpus(paragraphs: bool = False) -> list[str]:
    """A few hundred deterministic sentences covering everyday words, numbers and punctuation (``paragraphs``:
    and pairs of them set apart by a blank line)."""
    sentences = [f"{s} {v} {o}." for s, v, o in itertools.product(_SUBJECTS, _VERBS, _OBJECTS)]
    pairs = [f"{a}\n\n{b.capitalize()}" for a, b in zip(sentences[::7], sentences[3::7])] if paragraphs else []
    return sentences[::2] + _EXTRAS * 4 + pairs


# Llama 3's and Qwen 2's split before byte-level BPE: punctuation keeps the line breaks after it (".\n\n")
MERGED_NEWLINES = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _build_tokenizer(merge_newlines: bool = False) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (any text encodes and decodes exactly) and wrap it with a chat template;
    ``merge_newlines``: split words as Llama 3 and Qwen 2 do (a full stop and a blank line after it, one token)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = (
        pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(MERGED_NEWLINES), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        if merge_newlines
        else pre_tokenizers.ByteLevel(add_prefix_space=False)
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(paragraphs=merge_newlines), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        additional_special_tokens=SPECIAL_TOKENS[2:],
        chat_template=CHAT_TEMPLATE,
        model_max_length=256,
    )


def tiny_llama_config(tokenizer: PreTrainedTokenizerFast, **overrides: Any) -> LlamaConfig:
    """A 4-block, hidden-32 llama config sized for `tokenizer`."""
    return LlamaConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=64,
        vocab_size=len(tokenizer),
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
        **overrides,
    )


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Offline byte-level BPE tokenizer (~400 tokens) with `<pad>`, `<eos>` and a simple chat template."""
    return _build_tokenizer()


@pytest.fixture(scope="session")
def merged_tokenizer() -> PreTrainedTokenizerFast:
    """As ``tiny_tokenizer``, split as Llama 3 and Qwen 2 split: ``".\\n\\n"`` is one token."""
    return _build_tokenizer(merge_newlines=True)


def _model_factory(tokenizer: PreTrainedTokenizerFast) -> Callable[..., LlamaForCausalLM]:
    def make(seed: int = 0, **overrides: Any) -> LlamaForCausalLM:
        config = tiny_llama_config(tokenizer, **overrides)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaForCausalLM(config)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        return model.eval()

    return make


@pytest.fixture(scope="session")
def tiny_model_factory(tiny_tokenizer: PreTrainedTokenizerFast) -> Callable[..., LlamaForCausalLM]:
    """Callable `(seed=0, **config_overrides) -> LlamaForCausalLM`: a fresh 4-block, hidden-32 model.

    The same seed gives identical weights; the global torch RNG is left untouched. The model is in
    eval mode, as `from_pretrained` returns it.
    """
    return _model_factory(tiny_tokenizer)


@pytest.fixture(scope="session")
def save_tiny(
    tiny_tokenizer: PreTrainedTokenizerFast, tiny_model_factory: Callable[..., LlamaForCausalLM]
) -> Callable[..., Path]:
    """Callable `(folder, model=None, seed=0) -> Path`: saves tokenizer + model (fresh if None)."""

    def save(folder: str | Path, model: LlamaForCausalLM | None = None, seed: int = 0) -> Path:
        folder = Path(folder)
        (model if model is not None else tiny_model_factory(seed=seed)).save_pretrained(folder)
        tiny_tokenizer.save_pretrained(folder)
        return folder

    return save


def _organism_factory(tokenizer: PreTrainedTokenizerFast) -> Callable[[], LlamaForCausalLM]:
    from tiny_organism import sft_start

    fresh = _model_factory(tokenizer)
    state = sft_start(fresh(seed=0), tokenizer).state_dict()

    def make() -> LlamaForCausalLM:
        model = fresh(seed=0)
        model.load_state_dict(state)
        return model.eval()

    return make


@pytest.fixture(scope="session")
def organism_factory(tiny_tokenizer: PreTrainedTokenizerFast) -> Callable[[], LlamaForCausalLM]:
    """Callable `() -> LlamaForCausalLM`: a fresh copy of the tiny organism's SFT start (trained once)."""
    return _organism_factory(tiny_tokenizer)


@pytest.fixture(scope="session")
def merged_organism_factory(merged_tokenizer: PreTrainedTokenizerFast) -> Callable[[], LlamaForCausalLM]:
    """As ``organism_factory``, for ``merged_tokenizer``."""
    return _organism_factory(merged_tokenizer)
