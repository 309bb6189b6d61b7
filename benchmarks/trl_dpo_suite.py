"""TRL's own DPO test suite, offline, run twice: plain, and with ``ProbeCallback(trainer)`` on every trainer.

    python -m benchmarks.trl_dpo_suite                       # TRL's tests from the fetched mirror
    python -m benchmarks.trl_dpo_suite --trl-repo DIR        # a TRL git dir (bare or not) of another version
    python -m benchmarks.trl_dpo_suite --test-file PATH      # a test_dpo_trainer.py you have (its folder's
                                                             # testing_utils.py/conftest.py are used when present)

What it does:

1. Takes TRL's ``tests/test_dpo_trainer.py`` (with ``tests/testing_utils.py``, ``conftest.py``, ...) for the
   installed TRL: the tag ``v<version>`` of the git dir when it has it, else its newest commit (said in the
   result, ``trl_tests_ref``).
2. Builds what the tests load from the Hub, locally: every ``trl-internal-testing/tiny-*`` model they name that
   it knows (random weights, TRL's own tiny sizes from ``scripts/generate_tiny_models``, one byte-level BPE
   tokenizer trained here with a Qwen-style chat template) into a Hub cache read with ``HF_HUB_OFFLINE=1``; the
   datasets (``zen``, ``toolcall``, ``harmony``) by running TRL's own ``scripts/generate_*_dataset.py`` with
   ``push_to_hub`` saving to a folder instead.
3. Runs pytest on the test file twice (``nice``, one thread), with ``benchmarks/trl_suite_plugin.py``: plain,
   then with ``ProbeCallback(trainer)`` added to every ``DPOTrainer`` right after it is built (a documented
   refusal at attach is recorded and the test goes on without it, as a user would).
4. Compares the outcomes and saves ``benchmarks/results/trl_dpo_suite.json``: counts, the tests that fail only
   with the callback (must be none), those refused at attach and why, errors our code logged and survived.

Tests that need what this machine lacks (a GPU, vision/Pillow, liger, bitsandbytes, flash-attention kernels)
are skipped by TRL's own markers, in both runs alike; the result counts them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import types
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MIRROR = Path("/work/.mirror/huggingface+trl/repo")
HUB = "trl-internal-testing"
TEST_FILES = ["__init__.py", "conftest.py", "testing_utils.py", "testing_constants.py", "test_dpo_trainer.py"]
DATASET_SCRIPTS = {
    "zen": "scripts/generate_zen_dataset.py",
    "toolcall": "scripts/generate_toolcall_dataset.py",
    "harmony": "scripts/generate_harmony_dataset.py",
}
REMOTE_CODE = "scripts/generate_tiny_models/for_causal_lm/_remote_code"

SIZE = {
    "hidden_size": 8,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "intermediate_size": 32,
}
# TRL's tiny models (scripts/generate_tiny_models/for_causal_lm): config class and the settings that shape them.
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "tiny-Qwen2ForCausalLM-2.5": ("Qwen2Config", SIZE),
    "tiny-Cohere2ForCausalLM": ("Cohere2Config", {**SIZE, "logit_scale": 1.0, "rope_theta": 50000}),
    "tiny-Glm4MoeForCausalLM": (
        "Glm4MoeConfig",
        {
            **SIZE,
            "moe_intermediate_size": 32,
            "head_dim": 2,
            "n_routed_experts": 4,
            "num_experts_per_tok": 2,
            "attention_bias": True,
            "routed_scaling_factor": 2.5,
            "use_qk_norm": True,
            "num_nextn_predict_layers": 1,
        },
    ),
    "tiny-GptOssForCausalLM": ("GptOssConfig", {**SIZE, "num_local_experts": 4, "num_experts_per_tok": 2}),
    "tiny-Qwen3MoeForCausalLM": (
        "Qwen3MoeConfig",
        {**SIZE, "num_experts": 4, "num_experts_per_tok": 2, "norm_topk_prob": True},
    ),
    "tiny-NemotronHForCausalLM-nano": (
        "NemotronHConfig",
        {
            "hidden_size": 16,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "intermediate_size": 32,
            "layers_block_type": ["mamba", "attention", "moe"],
            "mamba_num_heads": 8,
            "mamba_head_dim": 4,
            "mamba_n_groups": 1,
            "ssm_state_size": 16,
            "mamba_d_conv": 4,
            "mamba_expand": 2,
            "n_routed_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "moe_shared_expert_intermediate_size": 32,
            "use_mamba_kernels": False,
        },
    ),
    "tiny-Olmo3ForCausalLM": ("Olmo3Config", {**SIZE, "use_cache": False}),
    "tiny-Lfm2ForCausalLM": (
        "Lfm2Config",
        {
            **SIZE,
            "full_attn_idxs": [1],
            "block_multiple_of": 8,
            "conv_bias": False,
            "conv_L_cache": 3,
            "block_auto_adjust_ff_dim": True,
            "use_cache": False,
        },
    ),
    "tiny-Lfm2ForCausalLM-2.5": (
        "Lfm2Config",
        {
            **SIZE,
            "layer_types": ["conv", "full_attention"],
            "conv_bias": False,
            "conv_L_cache": 3,
            "block_auto_adjust_ff_dim": False,
            "use_cache": False,
        },
    ),
    "tiny-RemoteForCausalLM": ("remote", SIZE),
}

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen-style: tools, tool calls, tool results and a reasoning field; extra template kwargs are ignored.
CHAT_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n# Tools\n{%- for tool in tools %}\n{{ tool | tojson }}{%- endfor %}"
    "<|im_end|>\n{%- endif %}"
    "{%- for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{%- if message.get('thinking') %}<think>{{ message['thinking'] }}</think>{%- endif %}"
    "{%- if message['content'] is string %}{{ message['content'] }}{%- endif %}"
    "{%- if message.get('tool_calls') %}{%- for call in message['tool_calls'] %}"
    "<tool_call>{{ (call['function'] if call.get('function') else call) | tojson }}</tool_call>"
    "{%- endfor %}{%- endif %}<|im_end|>\n{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)


def log(msg: str) -> None:
    print(f"[trl_dpo_suite {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----- sources ---------------------------------------------------------------------------------------------
def git_ref(repo: Path, version: str) -> str:
    """The tag of the installed TRL when the git dir has it, else its newest commit."""
    tags = subprocess.run(["git", "-C", str(repo), "tag", "-l", f"v{version}"], capture_output=True, text=True)
    if tags.stdout.strip():
        return f"v{version}"
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    return head.stdout.strip()


def git_show(repo: Path, ref: str, path: str) -> str | None:
    out = subprocess.run(["git", "-C", str(repo), "show", f"{ref}:{path}"], capture_output=True, text=True)
    return out.stdout if out.returncode == 0 else None


def gather_sources(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Write TRL's test package to ``work/tests`` and the dataset/remote-code scripts to ``work/scripts``."""
    import trl

    repo = Path(args.trl_repo) if args.trl_repo else (MIRROR if MIRROR.exists() else None)
    ref = git_ref(repo, trl.__version__) if repo else None
    tests, scripts = work / "tests", work / "scripts"
    tests.mkdir(parents=True, exist_ok=True)
    scripts.mkdir(parents=True, exist_ok=True)
    given = Path(args.test_file).resolve() if args.test_file else None
    for name in TEST_FILES:
        local = given.parent / name if given else None
        if given and name == "test_dpo_trainer.py":
            text = given.read_text()
        elif local is not None and local.exists():
            text = local.read_text()
        elif repo is not None:
            text = git_show(repo, ref, f"tests/{name}")
        else:
            text = None
        if text is None:
            if name == "test_dpo_trainer.py":
                raise SystemExit("no test_dpo_trainer.py: pass --test-file PATH or --trl-repo DIR (a TRL git dir)")
            text = ""
        (tests / name).write_text(text)
    for path in [
        *DATASET_SCRIPTS.values(),
        *(f"{REMOTE_CODE}/{f}" for f in ("configuration_remote.py", "modeling_remote.py")),
    ]:
        text = git_show(repo, ref, path) if repo is not None else None
        if text is not None:
            (scripts / Path(path).name).write_text(text)
    return {
        "trl_version": trl.__version__,
        "trl_tests_from": str(given) if given else str(repo),
        "trl_tests_ref": None if given else ref,
        "trl_tests_ref_is_release_tag": bool(ref and ref.startswith("v")) and not given,
    }


# ----- local Hub: tokenizer, models, datasets ----------------------------------------------------------------
def build_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [this_zen(), CHAT_TEMPLATE, "def f(x): return {'a': 1, \"b\": [2, 3]} # tools function arguments"]
    corpus += [w for w in this_zen().split()] * 3
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
        chat_template=CHAT_TEMPLATE,
        model_max_length=32768,
    )


def this_zen() -> str:
    import codecs
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        import this  # noqa: F401
    return codecs.decode(sys.modules["this"].s, "rot13")


def snapshot(hub: Path, kind: str, repo_id: str) -> Path:
    """An empty snapshot folder of ``repo_id`` in a Hub cache, with ``refs/main`` pointing at it."""
    base = hub / f"{kind}--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(commit)
    folder = base / "snapshots" / commit
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def build_models(hub: Path, scripts: Path, names: list[str]) -> dict[str, str]:
    """Every known tiny model the tests name, saved into the Hub cache; returns {model: error} for failures."""
    import torch
    import transformers
    from transformers import GenerationConfig

    tokenizer = build_tokenizer()
    ids = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id, "bos_token_id": None}
    failed: dict[str, str] = {}
    for name in names:
        if name not in MODELS:
            failed[name] = "not built here (no recipe for this model)"
            continue
        kind, settings = MODELS[name]
        try:
            torch.manual_seed(0)
            if kind == "remote":
                config_cls, model_cls = remote_classes(scripts)
            else:
                config_cls = getattr(transformers, kind)
                model_cls = getattr(transformers, kind.replace("Config", "ForCausalLM"))
            config = config_cls(vocab_size=len(tokenizer), **settings, **ids, tie_word_embeddings=False)
            model = model_cls(config).to(torch.bfloat16)
            for module_name, param in model.named_parameters():  # the Mamba mixer keeps these in float32
                if module_name.endswith(("A_log", ".D")):
                    param.data = param.data.float()
            folder = snapshot(hub, "models", f"{HUB}/{name}")
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            GenerationConfig(**ids).save_pretrained(folder)
        except Exception as exc:  # a model this transformers cannot build: its tests fail alike in both runs
            failed[name] = f"{type(exc).__name__}: {exc}"[:300]
    return failed


def remote_classes(scripts: Path) -> tuple[Any, Any]:
    """TRL's ``RemoteConfig``/``RemoteForCausalLM`` (custom code), registered so saving ships their files."""
    package = types.ModuleType("trl_suite_remote")
    package.__path__ = [str(scripts)]
    sys.modules["trl_suite_remote"] = package
    modules = {}
    for name in ("configuration_remote", "modeling_remote"):
        spec = importlib.util.spec_from_file_location(f"trl_suite_remote.{name}", scripts / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        modules[name] = module
    config_cls, model_cls = modules["configuration_remote"].RemoteConfig, modules["modeling_remote"].RemoteForCausalLM
    config_cls.register_for_auto_class()
    model_cls.register_for_auto_class("AutoModelForCausalLM")
    return config_cls, model_cls


def build_datasets(out: Path, scripts: Path) -> dict[str, str]:
    """Run TRL's dataset scripts with ``push_to_hub`` saving to ``out/<repo>/<config>``; {dataset: error}."""
    from datasets import Dataset, DatasetDict

    def save(self: Any, repo_id: str, config_name: str = "default", **_: Any) -> None:
        self.save_to_disk(str(out / repo_id / config_name))

    failed: dict[str, str] = {}
    saved = DatasetDict.push_to_hub, Dataset.push_to_hub
    DatasetDict.push_to_hub = Dataset.push_to_hub = save  # type: ignore[method-assign]
    try:
        for name, path in DATASET_SCRIPTS.items():
            script = scripts / Path(path).name
            if not script.exists():
                failed[name] = "no generator script"
                continue
            try:
                module = types.ModuleType(f"trl_suite_dataset_{name}")  # dataclasses look their module up
                sys.modules[module.__name__] = module
                exec(compile(script.read_text(), str(script), "exec"), module.__dict__)
                module.main(0.1, True, f"{HUB}/{name}")
            except Exception as exc:
                failed[name] = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        DatasetDict.push_to_hub, Dataset.push_to_hub = saved  # type: ignore[method-assign]
    return failed


def model_names(test_file: Path) -> list[str]:
    import re

    return sorted(set(re.findall(rf'"{HUB}/(tiny-[A-Za-z0-9_.\-]+)"', test_file.read_text())))


# ----- runs --------------------------------------------------------------------------------------------------
def run_suite(work: Path, attach: bool, extra: list[str], timeout: int, options: str = "{}") -> dict[str, Any]:
    label = "callback" if attach else "plain"
    junit, events = work / f"junit-{label}.xml", work / f"events-{label}.jsonl"
    for path in (junit, events):
        path.unlink(missing_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "HF_HUB_CACHE": str(work / "hub"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(work / "datasets-cache"),
        "TRL_SUITE_DATASETS": str(work / "datasets"),
        "TRL_SUITE_ATTACH": "1" if attach else "0",
        "TRL_SUITE_EVENTS": str(events),
        "TRL_SUITE_OPTIONS": options,
        "WANDB_MODE": "disabled",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TQDM_DISABLE": "1",
    }
    (work / "pytest.ini").write_text("[pytest]\n")
    cmd = [
        "nice",
        "-n",
        "19",
        sys.executable,
        "-m",
        "pytest",
        "tests/test_dpo_trainer.py",
        "-c",
        "pytest.ini",
        "--rootdir",
        str(work),
        "-p",
        "benchmarks.trl_suite_plugin",
        "-p",
        "no:cacheprovider",
        "-q",
        "-o",
        "junit_family=xunit1",
        f"--junitxml={junit}",
        *extra,
    ]
    log(f"{label} run: {' '.join(cmd[3:])}")
    started = time.time()
    with (work / f"pytest-{label}.log").open("w") as out:
        proc = subprocess.run(cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    seconds = time.time() - started
    outcomes = parse_junit(junit) if junit.exists() else {}
    log(f"{label} run: exit {proc.returncode} in {seconds:.0f} s, {len(outcomes)} tests")
    return {
        "seconds": round(seconds, 1),
        "exit_code": proc.returncode,
        "outcomes": outcomes,
        "events": [json.loads(line) for line in events.read_text().splitlines()] if events.exists() else [],
    }


def parse_junit(path: Path) -> dict[str, dict[str, str]]:
    """{test id: {"outcome": passed|failed|error|skipped, "message": ...}} from a JUnit XML file."""
    result = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        test_id = f"{case.get('classname')}::{case.get('name')}"
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message = (node.get("message") or node.text or "")[:400]
                break
        result[test_id] = {"outcome": outcome, "message": message}
    return result


def counts(outcomes: dict[str, dict[str, str]]) -> dict[str, int]:
    out = {"collected": len(outcomes), "passed": 0, "failed": 0, "error": 0, "skipped": 0}
    for value in outcomes.values():
        out[value["outcome"]] += 1
    return out


def compare(plain: dict[str, Any], callback: dict[str, Any]) -> dict[str, Any]:
    bad = {"failed", "error"}
    p, c = plain["outcomes"], callback["outcomes"]
    only_callback = sorted(t for t in c if c[t]["outcome"] in bad and p.get(t, {}).get("outcome") not in bad)
    only_plain = sorted(t for t in p if p[t]["outcome"] in bad and c.get(t, {}).get("outcome") not in bad)
    both = sorted(t for t in p if p[t]["outcome"] in bad and c.get(t, {}).get("outcome") in bad)
    skipped = sorted(t for t in p if p[t]["outcome"] == "skipped")
    refused = {e["test"]: e["refused"] for e in callback["events"] if e.get("refused")}
    attached = sorted(e["test"] for e in callback["events"] if e.get("attached"))
    ours = {e["test"]: e["our_errors"] for e in callback["events"] if e.get("our_errors")}
    summaries = [(e["test"], s) for e in callback["events"] for s in e.get("callbacks", [])]
    for test, summary in summaries:
        problems = [*summary.get("failures", []), *summary.get("not_recorded", [])]
        if summary.get("report_error"):
            problems.append(summary["report_error"])
        if problems:
            ours.setdefault(test, []).extend(str(p)[:300] for p in problems)
    started = [s for _, s in summaries if s.get("started")]
    return {
        "plain": counts(p),
        "callback": counts(c),
        "fail_only_with_callback": {t: c[t]["message"] for t in only_callback},
        "fail_only_plain": {t: p[t]["message"] for t in only_plain},
        "fail_in_both": {t: p[t]["message"] for t in both},
        "skipped_in_both": sum(1 for t in skipped if c.get(t, {}).get("outcome") == "skipped"),
        "skip_reasons": dict(Counter(p[t]["message"] for t in skipped).most_common()),
        "tests_with_callback_attached": len(attached),
        "callbacks_attached": len(summaries),
        "callbacks_that_started": len(started),
        "callbacks_that_probed": sum(1 for s in started if (s.get("probe_passes") or 0) > 0),
        "probe_passes": sum(s.get("probe_passes") or 0 for s in started),
        "rows_stored": sum(s.get("rows_stored") or 0 for s in started),
        "refused_at_attach": refused,
        "errors_our_code_logged_and_survived": ours,
        "seconds": {"plain": plain["seconds"], "callback": callback["seconds"]},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--test-file", help="TRL's tests/test_dpo_trainer.py (default: from --trl-repo)")
    parser.add_argument("--trl-repo", help=f"a TRL git dir (default: {MIRROR})")
    parser.add_argument("--work", default="/tmp/trl_dpo_suite", help="build and run folder (default %(default)s)")
    parser.add_argument("--out", default=str(RESULTS / "trl_dpo_suite.json"))
    parser.add_argument("-k", dest="select", help="pytest -k expression (a subset, e.g. for a quick check)")
    parser.add_argument("--only", choices=["plain", "callback"], help="one run (no comparison is saved)")
    parser.add_argument("--timeout", type=int, default=4 * 3600, help="seconds per run (default %(default)s)")
    parser.add_argument(
        "--reuse-plain", action="store_true", help="take the plain run's outcomes from the last run in --work"
    )
    parser.add_argument(
        "--options",
        default="{}",
        help="ProbeCallback options as JSON for the callback run, e.g. '{\"every_n_steps\": 2}' to probe in every "
        "test (default: none, ProbeCallback(trainer) as it comes)",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    info = gather_sources(args, work)
    log(f"TRL {info['trl_version']}; tests from {info['trl_tests_from']} at {info['trl_tests_ref']}")
    for folder in ("hub", "datasets"):
        shutil.rmtree(work / folder, ignore_errors=True)
    names = model_names(work / "tests" / "test_dpo_trainer.py")
    info["models_not_built"] = build_models(work / "hub", work / "scripts", names)
    info["models_built"] = sorted(set(names) - set(info["models_not_built"]))
    info["datasets_not_built"] = build_datasets(work / "datasets", work / "scripts")
    log(f"built {len(info['models_built'])} models; not built: {sorted(info['models_not_built'])}")
    if info["datasets_not_built"]:
        log(f"datasets not built: {info['datasets_not_built']}")

    extra = ["-k", args.select] if args.select else []
    runs = {}
    previous = work / "plain-run.json"
    if args.reuse_plain and previous.exists() and args.only is None:
        runs["plain"] = json.loads(previous.read_text())
        log(f"plain run: reused from {previous}")
    for label in ("plain", "callback"):
        if args.only in (None, label) and label not in runs:
            runs[label] = run_suite(work, label == "callback", extra, args.timeout, args.options)
            if label == "plain":
                previous.write_text(json.dumps(runs[label]))
    if len(runs) < 2:
        print(json.dumps({k: counts(v["outcomes"]) for k, v in runs.items()}, indent=1))
        return 0
    options = json.loads(args.options)
    result = {**info, "pytest_args": extra, "callback_options": options, **compare(runs["plain"], runs["callback"])}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 1 if result["fail_only_with_callback"] else 0


if __name__ == "__main__":
    sys.exit(main())
