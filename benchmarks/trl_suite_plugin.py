"""pytest plugin for ``benchmarks/trl_dpo_suite.py``: TRL's DPO tests offline, optionally with ``ProbeCallback``.

Loaded with ``-p benchmarks.trl_suite_plugin``. Environment:

- ``TRL_SUITE_DATASETS``: folder of datasets saved by the suite (``<repo id>/<config>/`` as ``save_to_disk``);
  ``datasets.load_dataset("trl-internal-testing/...")`` reads them instead of the Hub. Models resolve through a
  prepared Hub cache (``HF_HUB_CACHE`` with ``HF_HUB_OFFLINE=1``), so no patching is needed for them.
- ``TRL_SUITE_ATTACH=1``: every ``DPOTrainer`` gets ``ProbeCallback(trainer)`` added right after it is built, as
  a user adds the one line (``TRL_SUITE_OPTIONS``: a JSON object of options to pass too, e.g. a cadence). A
  refusal at attach (the documented ``ValueError``/``TypeError`` of bad input) is recorded and the test goes on
  without the callback, as the user would; any other exception propagates.
- ``TRL_SUITE_EVENTS``: a JSONL file; one line per test with what happened to the callback (attached, refused
  and why, errors our code logged while training).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

HUB_PREFIX = "trl-internal-testing/"


def _redirect_datasets(root: Path) -> None:
    import datasets

    original = datasets.load_dataset

    def load_dataset(path: Any, name: Any = None, *args: Any, **kwargs: Any) -> Any:
        if not (isinstance(path, str) and path.startswith(HUB_PREFIX)):
            return original(path, name, *args, **kwargs)
        split = kwargs.pop("split", None)
        streaming = kwargs.pop("streaming", False)
        folder = root / path / (name or "default")
        if not folder.exists():
            raise FileNotFoundError(f"no local copy of the Hub dataset {path!r} config {name!r} ({folder})")
        loaded = datasets.load_from_disk(str(folder))
        if split is not None:
            loaded = loaded[split]
        if streaming:
            if isinstance(loaded, datasets.DatasetDict):
                return datasets.IterableDatasetDict({k: v.to_iterable_dataset() for k, v in loaded.items()})
            return loaded.to_iterable_dataset()
        return loaded

    datasets.load_dataset = load_dataset


FAILURE_WORDS = ("failed", "could not", "matched no dataset row", "not recorded", "Traceback")


class _OurErrors(logging.Handler):
    """Collects what the ``probe_callback`` logger says went wrong (a failure of ours that training survived):
    every ERROR, and the WARNINGs that report a failed stage."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.ERROR or any(word in message for word in FAILURE_WORDS):
            self.messages.append(message[:500])


class _Attach:
    def __init__(self, events: Path | None) -> None:
        self.events = events
        self.current: dict[str, Any] = {}
        self.callbacks: list[Any] = []
        self.options: dict[str, Any] = json.loads(os.environ.get("TRL_SUITE_OPTIONS") or "{}")
        self.errors = _OurErrors()
        logging.getLogger("probe_callback").addHandler(self.errors)

    def install(self) -> None:
        from trl import DPOTrainer

        from probe_callback import ProbeCallback

        original = DPOTrainer.__init__
        state = self

        def __init__(trainer: Any, *args: Any, **kwargs: Any) -> None:
            original(trainer, *args, **kwargs)
            try:
                callback = ProbeCallback(trainer, **state.options)
            except (ValueError, TypeError) as exc:  # the documented attach-time refusal of bad input
                state.current.setdefault("refused", []).append(f"{type(exc).__name__}: {exc}")
                return
            trainer.add_callback(callback)
            state.current["attached"] = state.current.get("attached", 0) + 1
            state.callbacks.append(callback)

        DPOTrainer.__init__ = __init__

    def start(self, nodeid: str) -> None:
        self.current = {"test": nodeid}
        self.errors.messages = []

    def finish(self) -> None:
        summaries = []
        for callback in self.callbacks:  # what each callback did (its report), or that it never started
            if callback.monitor is None:
                summaries.append({"started": False})
                continue
            try:
                report = callback.report()
                cost = report.get("cost") or {}
                summaries.append(
                    {
                        "started": True,
                        "probe_passes": cost.get("probe_passes"),
                        "rows_stored": (report.get("store") or {}).get("rows"),
                        "failures": report.get("failures") or [],
                        "not_recorded": report.get("not_recorded") or [],
                    }
                )
            except Exception as exc:  # a report that cannot be made is a failure of ours too
                summaries.append({"started": True, "report_error": repr(exc)[:300]})
        if summaries:
            self.current["callbacks"] = summaries
        self.callbacks = []
        if self.errors.messages:
            self.current["our_errors"] = list(self.errors.messages)
        if self.events is not None and self.current:
            with self.events.open("a") as f:
                f.write(json.dumps(self.current) + "\n")


_ATTACH: _Attach | None = None


def _shim_import_utils() -> None:
    """Tests of a newer TRL may import ``is_X_available`` helpers this TRL lacks: they answer False (skip)."""
    import trl.import_utils as import_utils

    def missing(name: str) -> Any:
        if name.startswith("is_") and name.endswith("_available"):
            return lambda: False
        raise AttributeError(name)

    if not hasattr(import_utils, "__getattr__"):
        import_utils.__getattr__ = missing  # type: ignore[attr-defined]


def pytest_configure(config: pytest.Config) -> None:
    global _ATTACH
    _shim_import_utils()
    root = os.environ.get("TRL_SUITE_DATASETS")
    if root:
        _redirect_datasets(Path(root))
    if os.environ.get("TRL_SUITE_ATTACH") == "1":
        events = os.environ.get("TRL_SUITE_EVENTS")
        _ATTACH = _Attach(Path(events) if events else None)
        _ATTACH.install()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    if _ATTACH is not None:
        _ATTACH.start(item.nodeid)
    yield
    if _ATTACH is not None:
        _ATTACH.finish()
