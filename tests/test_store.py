import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from probe_callback.store.vectors import VectorStore


def test_append_read_roundtrip_across_ranks(tmp_path):
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((10, 2, 16)).astype(np.float32)
    for rank, rows in ((0, np.arange(0, 6)), (1, np.arange(4, 10))):
        w = VectorStore.create(tmp_path, layers=[2, 3], hidden=16, rank=rank)
        w.append_vectors(rows, vecs[rows])
        w.append_memberships(rows, np.full(len(rows), rank + 1), np.ones(len(rows), dtype=np.float32))
        w.close()
    store = VectorStore.open(tmp_path)
    assert store.n_rows == 10
    got = {}
    for rows, v in store.iter_vectors(layer_pos=1, chunk=3):
        for r, x in zip(rows, v):
            assert int(r) not in got, "a row shared by two ranks is read once"
            got[int(r)] = x
    assert sorted(got) == list(range(10))
    np.testing.assert_allclose(np.stack([got[i] for i in range(10)]), vecs[:, 1], atol=1e-2)
    assert len(store.memberships()["row"]) == 12
    np.testing.assert_allclose(store.vectors_for(np.array([7, 1]), 0), vecs[[7, 1], 0], atol=1e-2)
    np.testing.assert_allclose(store.vectors_for(np.array([9, 4, 0, 5]), 1), vecs[[9, 4, 0, 5], 1], atol=1e-2)
    with pytest.raises(KeyError, match="10"):
        store.vectors_for(np.array([3, 10]))


def test_projection_is_seeded_and_shrinks_records(tmp_path):
    w = VectorStore.create(tmp_path, layers=[1], hidden=2048)
    assert w.meta.dim == 768 and w.meta.record_bytes == 1536
    x = np.random.default_rng(1).standard_normal((3, 1, 2048)).astype(np.float32)
    w.append_vectors(np.arange(3), x)
    w.close()
    store = VectorStore.open(tmp_path)
    np.testing.assert_allclose(store.vectors_for(np.arange(3))[:, :], store.project(x[:, 0]), rtol=1e-2, atol=1e-2)
    with pytest.raises(ValueError, match="same layers"):
        VectorStore.create(tmp_path, layers=[2], hidden=2048)
    with pytest.raises(ValueError, match="projection_dim"):
        VectorStore.create(tmp_path / "x", layers=[1], hidden=64, projection_dim=128)


def test_resume_truncates_later_steps(tmp_path):
    w = VectorStore.create(tmp_path, layers=[1], hidden=4)
    w.append_memberships(np.arange(6), np.array([1, 1, 2, 2, 3, 3]), np.zeros(6, dtype=np.float32))
    w.truncate_steps_after(2)
    w.append_memberships(np.array([9]), np.array([3]), np.zeros(1, dtype=np.float32))
    w.close()
    m = VectorStore.open(tmp_path).memberships()
    assert m["step"].tolist() == [1, 1, 2, 2, 3] and m["row"].tolist() == [0, 1, 2, 3, 9]


def test_survives_kill_9_mid_write(tmp_path):
    writer = textwrap.dedent(
        f"""
        import numpy as np, sys
        from probe_callback.store.vectors import VectorStore
        w = VectorStore.create({str(tmp_path)!r}, layers=[1, 2], hidden=64, rank=0)
        i = 0
        while True:
            rows = np.arange(i, i + 7)
            w.append_vectors(rows, np.broadcast_to(rows[:, None, None], (7, 2, 64)).astype(np.float32))
            w.append_memberships(rows, rows // 7 + 1, np.zeros(7, dtype=np.float32))
            # a torn write: half a record appended after the flush
            w._files["vectors.f16"].write(b"x" * 37)
            w.flush()
            w._files["vectors.f16"].seek(0, 2)
            w._files["vectors.f16"].truncate(w._files["vectors.f16"].tell() - 37)
            print(i + 7, flush=True)
            i += 7
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    flushed = 0
    while flushed < 700:
        flushed = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = VectorStore.open(tmp_path)
    assert store.n_rows >= flushed
    for rows, v in store.iter_vectors(layer_pos=1):
        np.testing.assert_array_equal(v[:, 0], rows.astype(np.float16))
    # appending again after the crash repairs torn tails and stays aligned
    w = VectorStore.create(tmp_path, layers=[1, 2], hidden=64, rank=0)
    w.append_vectors(np.array([10**6]), np.full((1, 2, 64), 5.0, dtype=np.float32))
    w.close()
    np.testing.assert_array_equal(VectorStore.open(tmp_path).vectors_for(np.array([10**6]), 1), 5.0)
