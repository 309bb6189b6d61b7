"""Zero-cost capture of the paper's datapoint vectors from the reference forward DPO already makes.

DPO's collated batch is ``[chosen rows; rejected rows]``; the reference model is called with
``labels`` = input ids masked to -100 outside the completion. :class:`DatapointCapture` hooks that
call: a pre-hook keeps the batch's ids and completion mask, forward hooks on the chosen decoder
blocks pool the completion tokens' hidden states (the paper's ``a_L``), and a post-hook hands one
:class:`CapturedBatch` to a consumer. A hook on the policy forward keeps its per-token log-probs so
each row's learning record comes for free too (:class:`Learning`: the chosen answer's largest
per-token log-prob rise, policy minus reference, the tokens where it peaks, and the rejected
answer's largest fall). Hooks only read: the loss, gradients and weights are untouched.

Example:
    >>> ids = torch.tensor([[5, 6, 7, 8], [5, 6, 9, 10]])          # [chosen; rejected] of one pair
    >>> labels = ids.masked_fill(torch.tensor([[1, 1, 0, 0]] * 2).bool(), -100)  # completion tokens only
    >>> batches = []
    >>> with DatapointCapture(ref_model, ref_model.model.layers[1:2], on_batch=batches.append) as cap:
    ...     cap.active = True                                         # the callback's "a training step"
    ...     _ = ref_model(input_ids=ids, labels=labels)               # what DPO's reference forward does
    >>> batches[0].pooled.shape                                       # (2B, layers, H)
    torch.Size([2, 1, 32])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .blocks import block_output

PEAKS = 3  # tokens kept per row where the chosen answer's rise peaks


@dataclass
class Learning:
    """What the policy learned on each of B pairs, relative to the reference (nats per token).

    ``rise`` (B,): the chosen answer's largest per-token log-prob rise; ``peak_ids`` / ``peak_rises``
    (B, PEAKS): the chosen tokens with the largest rises, largest first (id -1 where the answer is
    shorter); ``fall`` (B,): the rejected answer's largest per-token log-prob fall.
    """

    rise: torch.Tensor
    peak_ids: torch.Tensor
    peak_rises: torch.Tensor
    fall: torch.Tensor

    def numpy(self) -> dict[str, np.ndarray]:
        """The fields as numpy arrays, keyed as the store's learning records."""
        return {k: getattr(self, k).numpy() for k in ("rise", "fall", "peak_ids", "peak_rises")}


@dataclass
class CapturedBatch:
    """What one forward showed: ids (2B, T), the completion mask (2B, T), pooled completion means
    (2B, n_layers, H) in float32 (``None`` for a policy-only batch, see ``reference_per_step``), and
    the pairs' :class:`Learning` when both log-probs were seen."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    pooled: torch.Tensor | None
    learning: Learning | None


def completion_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` (N, T, H) over positions where ``mask`` (N, T) is true; zeros for empty rows."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


class DatapointCapture:
    """Hooks on the reference forward (and the policy's log-probs) while :attr:`active` is true.

    ``ref_model``: the module DPO calls as reference (a separate model, or the PEFT policy whose
    adapters DPO disables; then only no-grad forwards count). ``blocks``: the decoder blocks whose
    outputs are HF ``hidden_states[L]``. ``policy``: the module of the trained forward, or ``None``.
    ``reference_per_step=False`` (TRL's ``precompute_ref_log_probs``: no reference forward per step)
    reports each policy forward as a batch without vectors, so batch membership is still recorded.
    Use as a context manager: hooks are always removed on exit.
    """

    def __init__(
        self,
        ref_model: nn.Module,
        blocks: Sequence[nn.Module],
        on_batch: Callable[[CapturedBatch], None],
        policy: nn.Module | None = None,
        reference_per_step: bool = True,
    ) -> None:
        self.ref_model, self.blocks, self.on_batch, self.policy = ref_model, list(blocks), on_batch, policy
        self.reference_per_step = reference_per_step
        self.active = False
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._pending: dict | None = None
        self._policy_logps: tuple[torch.Tensor, torch.Tensor] | None = None

    def __enter__(self) -> DatapointCapture:
        self._handles.append(self.ref_model.register_forward_pre_hook(self._pre, with_kwargs=True))
        self._handles.append(self.ref_model.register_forward_hook(self._post))
        for i, block in enumerate(self.blocks):
            self._handles.append(block.register_forward_hook(self._block_hook(i)))
        if self.policy is not None:
            self._handles.append(self.policy.register_forward_hook(self._policy_post, with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._pending = None

    def _is_reference_call(self) -> bool:
        # With PEFT the same module is also the policy: its reference forward is the no-grad one.
        return self.active and not (self.ref_model is self.policy and torch.is_grad_enabled())

    def _pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._pending = None
        labels = kwargs.get("labels")
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if not self._is_reference_call() or labels is None or input_ids is None:
            return
        self._pending = {
            "input_ids": input_ids,
            "attention_mask": kwargs.get("attention_mask", torch.ones_like(input_ids)),
            "completion_mask": labels != -100,
            "pooled": [None] * len(self.blocks),
        }

    def _block_hook(self, i: int) -> Callable:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if self._pending is not None:
                h = block_output(output).detach()
                self._pending["pooled"][i] = completion_mean(h.float(), self._pending["completion_mask"]).cpu()

        return hook

    def _post(self, module: nn.Module, args: tuple, output: object) -> None:
        pending, self._pending = self._pending, None
        if pending is None or any(p is None for p in pending["pooled"]):
            return
        ids = pending["input_ids"]
        learning = self._learning(ids, pending["completion_mask"], getattr(output, "log_probs", None))
        self.on_batch(
            CapturedBatch(
                input_ids=ids.detach().cpu(),
                attention_mask=pending["attention_mask"].detach().cpu(),
                completion_mask=pending["completion_mask"].detach().cpu(),
                pooled=torch.stack(pending["pooled"], dim=1),
                learning=learning,
            )
        )

    def _policy_post(self, module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        ids, labels = kwargs.get("input_ids"), kwargs.get("labels")
        if not (self.active and torch.is_grad_enabled() and ids is not None and labels is not None):
            return
        if not self.reference_per_step:
            mask = kwargs.get("attention_mask", torch.ones_like(ids))
            self.on_batch(CapturedBatch(ids.detach().cpu(), mask.detach().cpu(), (labels != -100).cpu(), None, None))
            return
        logps = getattr(output, "log_probs", None)
        self._policy_logps = None if logps is None else (ids, logps.detach())

    def _learning(self, ids: torch.Tensor, completion: torch.Tensor, ref_logps: torch.Tensor | None) -> Learning | None:
        seen, self._policy_logps = self._policy_logps, None
        if ref_logps is None or seen is None or seen[0] is None or seen[0].shape != ids.shape:
            return None
        if not torch.equal(seen[0], ids):
            return None
        return learning_record(ids, completion, (seen[1] - ref_logps.detach()).float())


def learning_record(ids: torch.Tensor, completion: torch.Tensor, diff: torch.Tensor) -> Learning:
    """The :class:`Learning` of a ``[chosen; rejected]`` batch from its per-token log-prob change.

    ``diff[:, j]`` (2B, L) is policy minus reference log-prob of the token at position ``j + 1`` of
    the last ``L + 1`` positions of ``ids`` (2B, T); ``completion`` (2B, T) marks completion tokens.

    Example:
        >>> ids = torch.tensor([[5, 6, 7], [5, 8, 9]])
        >>> mask = torch.tensor([[0, 1, 1], [0, 1, 1]]).bool()
        >>> rec = learning_record(ids, mask, torch.tensor([[2.0, 0.5], [-1.0, -3.0]]))
        >>> rec.rise.tolist(), rec.peak_ids[0].tolist(), rec.fall.tolist()
        ([2.0], [6, 7, -1], [3.0])
    """
    length = diff.shape[1]
    mask = completion[:, 1:][:, -length:].bool()
    tokens = ids[:, 1:][:, -length:]
    half = len(ids) // 2
    chosen = diff[:half].masked_fill(~mask[:half], float("-inf"))
    k = min(PEAKS, length)
    top, where = chosen.topk(k, dim=1)
    peak_ids = tokens[:half].gather(1, where).masked_fill(~torch.isfinite(top), -1)
    pad = PEAKS - k
    peak_ids = torch.nn.functional.pad(peak_ids, (0, pad), value=-1)
    peak_rises = torch.nn.functional.pad(top.nan_to_num(neginf=0.0), (0, pad))
    fall = -diff[half:].masked_fill(~mask[half:], float("inf")).amin(dim=1)
    return Learning(
        rise=top[:, 0].nan_to_num(neginf=0.0).cpu(),
        peak_ids=peak_ids.cpu(),
        peak_rises=peak_rises.cpu(),
        fall=fall.nan_to_num(neginf=0.0).cpu(),
    )
