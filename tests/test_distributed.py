"""Two processes (DDP on CPU with gloo): per-rank stores read as one, rank 0 publishes, every rank stops together."""

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


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo on Linux")
def test_two_ranks_capture_their_rows_and_stop_at_the_same_step(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)]),  # the children import this checkout
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "disabled",
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]
    done = subprocess.run([*cmd, str(HERE / "ddp_run.py"), str(tmp_path)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == 2 and ranks[0]["step"] == ranks[1]["step"] < 24, "both ranks stop at the pause"
    report = load_report(tmp_path / "probe_callback")
    assert report["paused_at_step"] == ranks[0]["step"]
    folders = sorted(p.name for p in (tmp_path / "probe_callback" / "vectors").glob("rank-*"))
    assert folders == ["rank-00000", "rank-00001"]
    m = VectorStore.open(tmp_path / "probe_callback" / "vectors").memberships()
    per_step = np.bincount(m["step"])[1:]
    assert per_step.tolist() == [4] * ranks[0]["step"], "each step: 2 rows on each of the 2 ranks"
    alerts = (tmp_path / "probe_callback" / "alerts.jsonl").read_text().splitlines()
    assert len(alerts) == len(set(alerts)), "only rank 0 publishes"
