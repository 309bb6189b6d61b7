"""Keep ``row`` an index into the user's dataset when ``precompute_ref_log_probs=True`` flattens TRL's row mapping.

TRL drops the rows whose prompt fills ``max_length`` through an index mapping on the processed dataset.
With ``precompute_ref_log_probs=True`` it flattens that mapping away inside ``DPOTrainer.__init__``,
before any callback exists: importing ``probe_callback`` wraps ``DPOTrainer._precompute_ref_logps`` (see
:func:`remember_kept_rows`) to note the mapping on the trainer first (a trainer built before
``probe_callback`` was imported gets a warning instead).

Example:
    >>> import datasets
    >>> dataset_rows(datasets.Dataset.from_dict({"x": [1, 2, 3]}).select([0, 2])).tolist()
    [0, 2]
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import sys
from typing import Any

import numpy as np

# Where the wrapper below notes, on the trainer, the user's row of each position of the train dataset it precomputes.
KEPT_ROWS = "_probe_callback_kept_rows"
_DPO_MODULE = "trl.trainer.dpo_trainer"


def dataset_rows(dataset: Any) -> np.ndarray:
    """The user's row of each position of a dataset ``DPOTrainer`` prepared (its filter's index mapping)."""
    indices = getattr(dataset, "_indices", None)
    if indices is None:
        return np.arange(len(dataset), dtype=np.int64)
    return np.asarray(indices.column(0).to_numpy(), dtype=np.int64)


def _wrap_precompute(module: Any) -> None:
    """Wrap ``DPOTrainer._precompute_ref_logps`` so it notes the train rows TRL kept before it flattens them away.

    The wrapper only reads the dataset it is given; whatever happens in it, TRL's own method runs unchanged.
    """
    cls = getattr(module, "DPOTrainer", None)
    original = getattr(cls, "_precompute_ref_logps", None)
    if cls is None or original is None or getattr(original, "_probe_callback", False):
        return

    @functools.wraps(original)
    def _precompute_ref_logps(self: Any, dataset: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "train":
            with contextlib.suppress(Exception):  # a failure of ours never stops the user's trainer
                setattr(self, KEPT_ROWS, dataset_rows(dataset))
        return original(self, dataset, name, *args, **kwargs)

    _precompute_ref_logps._probe_callback = True  # type: ignore[attr-defined]
    cls._precompute_ref_logps = _precompute_ref_logps


class _WrapOnImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Wraps TRL's DPO trainer module when it is imported after ``probe_callback``."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != _DPO_MODULE:
            return None
        try:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None and spec.loader is not None:
                    self._loader = spec.loader
                    spec.loader = self
                    return spec
        except Exception:  # the import goes on as if we were not here
            return None
        return None

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        module.__loader__ = module.__spec__.loader = self._loader  # the module's own loader, as without us
        self._loader.exec_module(module)
        with contextlib.suppress(Exception):
            _wrap_precompute(module)
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)


def remember_kept_rows() -> None:
    """Make ``DPOTrainer`` note which user rows it kept before ``precompute_ref_log_probs`` flattens them.

    TRL drops the rows whose prompt fills ``max_length`` through an index mapping, and with
    ``precompute_ref_log_probs=True`` joins its cached log-probs to the dataset, which flattens that
    mapping inside ``DPOTrainer.__init__``, before a callback can be made. Called on importing
    ``probe_callback``: wraps TRL's method now if TRL is imported, else when it is.
    """
    module = sys.modules.get(_DPO_MODULE)
    if module is not None:
        _wrap_precompute(module)
    elif not any(isinstance(finder, _WrapOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _WrapOnImport())
