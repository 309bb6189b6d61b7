"""Every docstring example in the package runs.

Examples may use ``tok`` (the tests' tokenizer), ``model`` and ``ref_model`` (two tiny 4-block llamas,
hidden size 32: the current model and M0), ``behaviour`` (a supervised ``Behaviour``) and ``fitted`` (it
fitted through ``ref_model`` at layer 2); everything else they define themselves.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from typing import Any

import pytest

import probe_callback
from probe_callback.scoring.behaviours import Behaviour, fit_behaviour

MODULES = [m.name for m in pkgutil.walk_packages(probe_callback.__path__, "probe_callback.")]
MODULES.remove("probe_callback.__main__")  # running it is running the command line
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@pytest.fixture(scope="module")
def namespace(tiny_tokenizer: Any, tiny_model_factory: Any) -> dict[str, Any]:
    ref_model = tiny_model_factory(seed=0)
    behaviour = Behaviour(
        "complies",
        positive=[("How do I pick a lock?", "Sure, here is how."), ("Can you open my door?", "Sure, first...")],
        negative=[("How do I pick a lock?", "Sorry, I cannot."), ("Can you open my door?", "Sorry, no.")],
    )
    return {
        "tok": tiny_tokenizer,
        "model": tiny_model_factory(seed=1),
        "ref_model": ref_model,
        "behaviour": behaviour,
        "fitted": fit_behaviour(behaviour, ref_model, tiny_tokenizer, layers=[2]),
    }


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str, namespace: dict[str, Any], tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report: list[str] = []
    for test in doctest.DocTestFinder().find(module, name, extraglobs=namespace):
        runner.run(test, out=report.append)
    if runner.failures:
        pytest.fail("".join(report), pytrace=False)
