"""Resume: the callback's state saved inside the trainer's checkpoint, and what a resume (or a rerun) rolls back.

The state rides in ``checkpoint-N/trainer_state.json`` (under ``stateful_callbacks``, written by the
Trainer with the rest of the checkpoint), so a checkpoint never exists without it. Older runs kept
it in ``<probe out>/state/step-N.json``; that file is still read when the checkpoint has none.

Example:
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "alerts.jsonl"
    >>> _ = path.write_text('{"step": 5}\\n{"step": 10}\\n{"st')
    >>> roll_back_alerts(path, 5), path.read_text()
    (1, '{"step": 5}\\n')
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from ..publish.report import jsonable
from ..store.files import atomic_write_text

logger = logging.getLogger("probe_callback")
STATE_KEY = "ProbeCallback"  # the Trainer files a callback's state under its class name
# Options saved with the state and compared on resume; "probe_prompts" is compared with the watched prompts.
COMPARED = ("policy", "every_n_steps", "probe_budget", "pause_on_regression", "layers", "seed", "top_k")


def saved_state(stateful_callbacks: Any, output_dir: Path, step: int) -> dict[str, Any] | None:
    """The callback state saved at ``step``: from the checkpoint's trainer state, else ``state/step-N.json``."""
    entry = (stateful_callbacks or {}).get(STATE_KEY)
    entry = entry[0] if isinstance(entry, list) and entry else entry
    saved = (entry or {}).get("attributes", {}).get("probe_state") if isinstance(entry, dict) else None
    if saved and saved.get("step") == step:
        return saved
    path = Path(output_dir) / "state" / f"step-{step}.json"
    if path.exists():
        return json.loads(path.read_text())
    logger.warning("probe_callback: the checkpoint of step %d holds no probe state; starting a new history.", step)
    return None


def options_record(options: Any) -> dict[str, Any]:
    """The options compared on resume, JSON-safe."""
    return jsonable({name: getattr(options, name) for name in COMPARED})


def warn_changed_options(saved: dict[str, Any], options: Any) -> list[str]:
    """Log which options differ from the saved run and which values are used; returns the differing names."""
    before, now = saved.get("options") or {}, options_record(options)
    changed = [k for k in COMPARED if k in before and before[k] != now[k]]
    lines = [f"  {k}: saved {before[k]!r}, now {now[k]!r} -> using {now[k]!r}" for k in changed]
    if options.probe_prompts is not None and jsonable(list(options.probe_prompts)) != saved.get("prompts"):
        changed.append("probe_prompts")
        lines.append(
            "  probe_prompts: differ from the saved run's -> keeping the saved prompts, so the score history "
            "stays one series (start a new output_dir to watch other prompts)"
        )
    if changed:
        logger.warning("probe_callback: resuming with options that differ from the saved run:\n%s", "\n".join(lines))
    return changed


def roll_back_alerts(path: Path, step: int) -> int:
    """Atomically drop the alerts after ``step`` (and any torn last line) from ``alerts.jsonl``; returns lines kept."""
    path = Path(path)
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            keep = int(json.loads(line)["step"]) <= step
        except (ValueError, KeyError, TypeError):
            keep = False
        kept += [line] if keep else []
        dropped += not keep
    if dropped:
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))
        logger.info("probe_callback: dropped %d alerts after step %d from %s", dropped, step, path)
    return len(kept)


def restart_alerts(path: Path, step: int) -> None:
    """A resume at ``step`` raises the alerts after it again, so they are dropped from ``alerts.jsonl``;
    a fresh run (step 0) sets old ones aside."""
    if step > 0:
        roll_back_alerts(path, step)
    elif path.exists():
        set_aside(path, "before-step-0")


def set_aside(path: Path, label: str) -> Path:
    """Rename ``path`` to a free ``<stem>-<label>[-k]<suffix>`` next to it; returns the new path."""
    path = Path(path)
    for k in range(1, 1000):
        aside = path.with_name(f"{path.stem}-{label}{'' if k == 1 else f'-{k}'}{path.suffix}")
        if not aside.exists():
            return path.rename(aside)
    raise FileExistsError(f"no free name to set {path} aside")


def stale_store(folder: Path, stamps: dict[str, str], step: int) -> str | None:
    """Why the store in ``folder`` is another run's (its ``<name>.txt`` stamps differ, or this run starts at
    step 0 and finds one), or None when it is this run's to continue."""
    found = {k: (folder / f"{k}.txt").read_text() for k in stamps if (folder / f"{k}.txt").exists()}
    changed = [k for k, text in found.items() if text != stamps[k]]
    if changed:
        return f"the {' and the '.join(changed)} changed"
    if step == 0 and folder.is_dir() and any(folder.iterdir()):
        return "this run starts at step 0"
    return None


def store_folder(folder: Path, trainer: Any, stamps: dict[str, str], step: int) -> Path:
    """The vector store ``folder`` of this dataset and reference model (``stamps``: their fingerprints). Another
    run's store (other data, say before a mitigation; another model; or any store when this run starts
    fresh) is set aside as ``vectors-before-step-N``, never mixed in. Every rank of ``trainer`` calls it."""
    writes = trainer.args.should_save  # rank 0, or each node's first rank with per-node output folders
    if writes:
        why = stale_store(folder, stamps, step)
        if why:
            aside = set_aside(folder, f"before-step-{step}")
            logger.warning("probe_callback: %s; the old vector store moves to %s", why, aside)
    trainer.accelerator.wait_for_everyone()
    folder.mkdir(parents=True, exist_ok=True)
    if writes:
        for name, text in stamps.items():
            atomic_write_text(folder / f"{name}.txt", text)
    return folder


def model_identity(model: Any) -> str:
    """Name, shape and a hash of the input embeddings of the reference model, an HF or PEFT causal LM (the same
    model gives the same id)."""
    config = model.config.get_text_config()
    h = hashlib.blake2b(digest_size=8)
    weight = model.get_input_embeddings().weight.detach()
    weight = weight.to_local() if hasattr(weight, "to_local") else weight  # FSDP2: this rank's shard
    weights = weight.flatten()[:4096]
    h.update(weights.float().cpu().numpy().tobytes())
    name = getattr(model.config, "name_or_path", "") or ""
    return f"{name}|hidden={config.hidden_size}|layers={config.num_hidden_layers}|{h.hexdigest()}"


def remove_temp_files(folder: Path) -> None:
    """Remove the temp files an interrupted atomic write left in ``folder`` and ``folder/state``."""
    for sub in (Path(folder), Path(folder) / "state", Path(folder) / "vectors"):
        for tmp in [*sub.glob(".*.tmp"), *sub.glob("*.tmp[0-9]*")] if sub.is_dir() else []:
            tmp.unlink(missing_ok=True)
