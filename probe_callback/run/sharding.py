"""Sharded and multi-node training: which model forwards every rank must run, and how; per-node stores.

Under FSDP and ZeRO-3 each rank holds a shard of the parameters, so any forward of the policy or a
sharded reference is a collective: every rank runs it (same inputs, same number of calls) or the run
deadlocks. The callback therefore measures on every rank (probes, the datapoint pass, behaviour
likelihoods) and leaves scoring and deciding, numpy only, to rank 0.

Example:
    >>> with gathered(trainer.model_wrapped, trainer.accelerator) as model:   # doctest: +SKIP
    ...     model.generate(...)                                               # every rank runs this
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from accelerate.utils import DistributedType, extract_model_from_parallel
from torch import nn

from ..capture.blocks import unwrap_parallel


def is_sharded(accelerator: Any) -> bool:
    """True under FSDP or ZeRO-3 (parameters partitioned; with several processes a forward is a collective)."""
    if accelerator is None:
        return False
    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    plugin = accelerator.state.deepspeed_plugin
    return accelerator.distributed_type == DistributedType.DEEPSPEED and plugin is not None and plugin.zero_stage == 3


def backend_name(accelerator: Any) -> str:
    """``"fsdp1"``, ``"fsdp2"``, ``"zero3"``, ``"ddp"`` (any other data-parallel run) or ``"single"``."""
    if accelerator is not None and accelerator.distributed_type == DistributedType.FSDP:
        return f"fsdp{accelerator.state.fsdp_plugin.fsdp_version}"
    if is_sharded(accelerator):
        return "zero3"
    return "ddp" if accelerator is not None and accelerator.num_processes > 1 else "single"


@contextmanager
def gathered(model: nn.Module, accelerator: Any) -> Iterator[nn.Module]:
    """``model`` unwrapped and ready for forwards (every rank must enter together when sharded).

    ZeRO-3: parameters gathered the way TRL gathers them for generation
    (``trl.models.utils.unwrap_model_for_generation``; an engine without an optimizer, whose hooks
    that helper lifts, gets ``deepspeed.zero.GatheredParameters``). FSDP2: the module itself, whose
    forwards gather each shard. FSDP1 (tested on CPU): the root's own parameters summoned, its wrapped
    blocks gathering theirs, as TRL does for generation. Otherwise: the bare module.
    """
    if not is_sharded(accelerator):
        yield extract_model_from_parallel(model)
    elif accelerator.distributed_type == DistributedType.FSDP:
        if accelerator.state.fsdp_plugin.fsdp_version == 1:
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

            with FSDP.summon_full_params(model, writeback=False, recurse=False):
                yield extract_model_from_parallel(model)
        else:
            yield extract_model_from_parallel(model)
    elif getattr(model, "optimizer", None) is not None:
        from trl.models.utils import unwrap_model_for_generation

        with unwrap_model_for_generation(model, accelerator) as unwrapped:
            yield unwrapped
    else:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            yield extract_model_from_parallel(model)


@contextmanager
def reference_model(trainer: Any, ref_model: nn.Module) -> Iterator[nn.Module]:
    """M0 of ``trainer`` ready for forwards: the separate reference model; with PEFT, TRL's frozen "ref"
    copy of a pretrained adapter, else the policy with its adapters disabled; ``ref_model``: the
    callback's own frozen copy of the initial policy when DPO precomputes its reference log-probs.

    Sharded (FSDP, ZeRO-3): every rank enters together; see :func:`gathered`.

    Example:
        >>> with reference_model(trainer, reference_module(trainer)) as ref:   # doctest: +SKIP
        ...     ref(input_ids=ids)
    """
    if trainer.ref_model is not None:
        with gathered(trainer.ref_model, trainer.accelerator) as ref:
            yield ref
    elif ref_model is not unwrap_parallel(trainer.model):  # precompute: our frozen copy of the initial policy
        yield ref_model
    else:
        with gathered(trainer.model_wrapped, trainer.accelerator) as peft_model:
            model: Any = peft_model
            if "ref" in model.peft_config:
                from trl.trainer.utils import use_adapter

                with use_adapter(model, "ref"):
                    yield model
            else:
                with model.disable_adapter():
                    yield model


class RankMirror:
    """Per-node output folders (``save_on_each_node=True``): rank 0 keeps a copy of every other node's
    rank store folders, so its report ranks every rank's rows.

    At each :meth:`sync` (a collective: every rank calls it) each rank on another node than rank 0
    sends the bytes its store files grew by since its last sync (``gather_object``); rank 0 appends
    them to ``<store>/rank-NNNNN/``. A rank's first sync sends its files whole and replaces rank 0's
    copy (a resume truncates them). Memory: what was written since the last sync. With a shared
    ``output_dir`` (the default) nothing is sent.
    """

    def __init__(self, folder: Path, accelerator: Any, per_node: bool) -> None:
        self.folder, self.accelerator = Path(folder), accelerator
        self.active = per_node and accelerator.num_processes > 1
        # torchrun numbers ranks node by node: rank 0's node holds global ranks 0..local_world_size-1.
        self.sends = self.active and accelerator.process_index != accelerator.local_process_index
        self.sent: dict[str, int] = {}

    def sync(self) -> None:
        if not self.active:
            return
        from accelerate.utils import gather_object

        grown: dict[str, bytes] = {}
        for path in sorted(self.folder.iterdir()) if self.sends else []:
            with open(path, "rb") as f:
                f.seek(self.sent.get(path.name, 0))
                grown[path.name] = f.read()
        fresh = self.sends and not self.sent
        for name, data in grown.items():
            self.sent[name] = self.sent.get(name, 0) + len(data)
        parts = gather_object([(self.folder.name, fresh, grown)])
        if self.accelerator.is_main_process:
            for name, whole, files in parts:
                target = self.folder.parent / name
                target.mkdir(exist_ok=True)
                for file, data in files.items():
                    with open(target / file, "wb" if whole else "ab") as f:
                        f.write(data)


def on_every_rank(accelerator: Any, flag: bool) -> bool:
    """Whether ``flag`` holds on every rank (a collective: every rank calls it)."""
    if accelerator.num_processes == 1:
        return flag
    from accelerate.utils import gather_object

    return all(gather_object([flag]))


def from_rank0(accelerator: Any, value: Any) -> Any:
    """Rank 0's ``value`` (a picklable object) on every rank (a collective: every rank calls it)."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]
