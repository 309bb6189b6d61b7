"""Sharded training on two CPU processes (gloo): FSDP1, FSDP2 and DeepSpeed ZeRO-3 against one process.

Each run is the planted organism through a real DPOTrainer (`sharded_run.py`): it pauses, then
resumes from the pause to the end. Stored vectors must equal one process's to float16 rounding
(measured: largest difference 2.4e-7 on values up to 0.043; asserted: 1e-4).

FSDP1 on CPU (see `sharded_run.py` for its settings) checkpoints with SHARDED_STATE_DICT: its full-state-dict
save segfaults on CPU parameters (accelerate asks FSDP1 for `offload_to_cpu=True`; torch 2.13 then crashes
cloning the gathered parameters, reproduced with two ranks and two `nn.Linear`). Its resume restores the
model (the first step after it has one process's loss and grad norm, 0.6179 and 0.5984) but not the
optimizer exactly (the second: loss 0.6019 against 0.6045; the same with no callback on the resumed trainer),
so after the resume its scores are not compared.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from probe_callback import load_report
from probe_callback.store.vectors import VectorStore

HERE = Path(__file__).parent
ROOT = HERE.parent
MAX_STEPS = 24
TOLERANCE = 1e-4
PORTS = {"fsdp2": 29561, "zero3": 29562, "fsdp1": 29564}

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo on Linux")


def _run(mode: str, out: Path) -> list[dict]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)]),
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "disabled",
        "DS_ACCELERATOR": "cpu",
    }
    script = [str(HERE / "sharded_run.py"), mode, str(out)]
    if mode == "single":
        cmd, ranks = [sys.executable, *script], 1
    else:
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
        cmd, ranks = [*torchrun, "--master_port", str(PORTS[mode]), *script], 2
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(ranks)]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    [rank] = _run("single", out)
    return rank, out


@pytest.mark.parametrize(
    "mode",
    [
        "fsdp2",
        "fsdp1",
        pytest.param(
            "zero3",
            marks=pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed"),
        ),
    ],
)
def test_sharded_run_matches_one_process_pauses_together_and_resumes(mode, one_process, tmp_path):
    single, single_out = one_process
    ranks = _run(mode, tmp_path)
    assert [r["backend"] for r in ranks] == [mode, mode], "really sharded (not a silent DDP fallback)"
    assert ranks[0]["step"] == ranks[1]["step"] == single["step"] < MAX_STEPS, "every rank pauses at one step"
    assert [r["resumed_to"] for r in ranks] == [MAX_STEPS, MAX_STEPS]
    for rank in ranks:
        assert rank["r0"] == single["r0"] and rank["probes"] == single["probes"], "the same greedy answers"

    store, reference = (VectorStore.open(d / "probe_callback" / "vectors") for d in (tmp_path, single_out))
    assert sorted(p.name for p in store.path.glob("rank-*")) == ["rank-00000", "rank-00001"]
    rows = reference.row_ids()
    assert np.array_equal(store.row_ids(), rows)
    assert np.abs(store.vectors_for(rows) - reference.vectors_for(rows)).max() <= TOLERANCE
    per_step = np.bincount(store.memberships()["step"])[1:]
    assert per_step.tolist() == [4] * MAX_STEPS, "each step: 2 rows on each rank, once across the resume"

    report, expected = (load_report(d / "probe_callback") for d in (tmp_path, single_out))
    [b] = [b for b in report["behaviours"] if b["name"] == "compliance"]
    [e] = [b for b in expected["behaviours"] if b["name"] == "compliance"]
    assert [s for s, _ in b["score_history"]] == [s for s, _ in e["score_history"]], "one history across the resume"
    compared = [k for k, (s, _) in enumerate(e["score_history"]) if mode != "fsdp1" or s <= single["step"]]
    assert len(compared) >= 3
    got, want = ([h[k][1] for k in compared] for h in (b["score_history"], e["score_history"]))
    assert np.allclose(got, want, atol=1e-3)
    assert b["flagged_at_step"] == single["step"]
    alerts = (tmp_path / "probe_callback" / "alerts.jsonl").read_text().splitlines()
    assert len(alerts) == len(set(alerts)), "only rank 0 publishes"


def test_two_nodes_with_their_own_output_folders(one_process, tmp_path):
    """Two single-process 'nodes' (torchrun --nnodes 2 on this machine), save_on_each_node=True: node 0's
    report ranks both ranks' rows, and each node keeps its own state for a resume."""
    _, single_out = one_process
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)]), "OMP_NUM_THREADS": "1"}
    env["WANDB_MODE"] = "disabled"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1"]
    torchrun += ["--master_addr", "127.0.0.1", "--master_port", "29563"]
    nodes = [
        subprocess.Popen(
            [*torchrun, "--node_rank", str(k), str(HERE / "sharded_run.py"), "nodes", str(tmp_path / f"node{k}")],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in (0, 1)
    ]
    for node in nodes:
        _, err = node.communicate(timeout=900)
        assert node.returncode == 0, err[-3000:]
    steps = [json.loads((tmp_path / f"node{k}" / f"rank{k}.json").read_text())["step"] for k in (0, 1)]
    assert steps[0] == steps[1] < MAX_STEPS
    main = tmp_path / "node0" / "probe_callback"
    assert not (tmp_path / "node1" / "probe_callback" / "vectors" / "rank-00000").exists(), "really separate folders"
    node1_state = json.loads((tmp_path / "node1" / f"checkpoint-{steps[0]}" / "trainer_state.json").read_text())
    assert "ProbeCallback" in node1_state["stateful_callbacks"], "each node's checkpoint holds the callback's state"
    store, reference = VectorStore.open(main / "vectors"), VectorStore.open(single_out / "probe_callback" / "vectors")
    rows = reference.row_ids()
    assert np.array_equal(store.row_ids(), rows), "rank 0 holds every rank's rows"
    assert np.abs(store.vectors_for(rows) - reference.vectors_for(rows)).max() <= TOLERANCE
    assert np.bincount(store.memberships()["step"])[1:].tolist() == [4] * steps[0]
    report = load_report(main)
    assert report["paused_at_step"] == steps[0] and report["store"]["rows"] == len(rows)
