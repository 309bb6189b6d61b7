"""A causal LM's decoder blocks: find them, pick the probed layers, read their outputs.

Layer convention: layer ``L`` is HF ``hidden_states[L]``, the output of decoder block ``L - 1``, for
``1 <= L < layer_count(model)``. The last entry of ``hidden_states`` is taken after the final norm,
so it is not offered.

Example:
    >>> layer_count(model), default_layer(model)       # a tiny 4-block model
    (4, 2)
    >>> with record_block_outputs(model, [2]) as acts:
    ...     _ = model(torch.tensor([[5, 6, 7]]))
    >>> acts[2].shape
    torch.Size([1, 3, 32])
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from accelerate.utils import extract_model_from_parallel
from torch import nn

# The paper's layer: about 60% of the depth (OLMo 2 7B: 20 of 32).
DEFAULT_DEPTH = 0.6
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


def unwrap_parallel(model: nn.Module) -> nn.Module:
    """``model`` without DDP/DataParallel/FSDP/DeepSpeed/compile wrappers; PEFT is kept (its adapter must apply).

    Example:
        >>> unwrap_parallel(nn.DataParallel(model)) is model
        True
    """
    return extract_model_from_parallel(model)


def find_decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of a causal LM (also through DDP-style and PEFT wrappers).

    Example:
        >>> find_decoder_blocks(model) is model.model.layers
        True
    """
    inner: Any = unwrap_parallel(model)
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
    """Number of decoder blocks; valid probe layers are ``1 .. layer_count(model) - 1``.

    Example:
        >>> layer_count(model)
        4
    """
    return len(find_decoder_blocks(model))


def default_layer_index(num_layers: int) -> int:
    """The default probed layer of a model with ``num_layers`` decoder blocks (about 60% of the depth).

    Example:
        >>> default_layer_index(32), default_layer_index(30)
        (19, 18)
    """
    return min(max(1, round(DEFAULT_DEPTH * num_layers)), num_layers - 1)


def default_layer(model: nn.Module) -> int:
    """The default probed layer of ``model``: :func:`default_layer_index` of its block count.

    Example:
        >>> default_layer(model)
        2
    """
    return default_layer_index(layer_count(model))


def check_layer_indices(layers: Sequence[int], num_layers: int | None = None, model_name: str = "the model") -> None:
    """Raise a ``ValueError`` unless every layer is distinct and (given ``num_layers``) in ``1 .. num_layers - 1``.

    Example:
        >>> check_layer_indices([2, 9], 4)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: layers [9] are out of range for the model with 4 decoder blocks: use ... between 1 and 3 ...
    """
    if len(set(layers)) != len(layers):
        raise ValueError(f"Duplicate layers in {list(layers)}: list each layer once.")
    if num_layers is None:
        return
    bad = [layer for layer in layers if not (isinstance(layer, numbers.Integral) and 1 <= layer < num_layers)]
    if bad:
        raise ValueError(
            f"layers {bad} are out of range for {model_name} with {num_layers} decoder blocks: use HF hidden_states "
            f"indices between 1 and {num_layers - 1} (the final, post-norm state is not offered)."
        )


def check_layers(model: nn.Module, layers: Sequence[int]) -> None:
    """:func:`check_layer_indices` for ``model``, named in the error.

    Example:
        >>> check_layers(model, [1, 3])
    """
    check_layer_indices(layers, layer_count(model), type(unwrap_parallel(model)).__name__)


def block_output(output: Any) -> torch.Tensor:
    """The hidden states a decoder block returned (blocks return a tensor or a tuple starting with one).

    Example:
        >>> block_output((torch.zeros(1, 2, 3), None)).shape
        torch.Size([1, 2, 3])
    """
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def record_block_outputs(
    model: nn.Module, layers: Sequence[int], first_only: bool = False
) -> Iterator[dict[int, torch.Tensor]]:
    """Forward hooks filling ``{layer: hidden states (B, S, H)}`` (detached) on each forward; removed on exit.

    ``first_only``: keep the first forward's states (e.g. a generation's prompt pass) until cleared.
    See the module example.
    """
    check_layers(model, layers)
    blocks = find_decoder_blocks(model)
    store: dict[int, torch.Tensor] = {}

    def hook_for(layer: int) -> Callable[[nn.Module, Any, Any], None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if not (first_only and layer in store):
                store[layer] = block_output(output).detach()

        return hook

    handles = [blocks[layer - 1].register_forward_hook(hook_for(layer)) for layer in layers]
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()
