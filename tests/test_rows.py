"""The row index: bounded memory (compact arrays, texts read from the dataset) with the behaviour it had."""

import numpy as np
import pytest
import torch
from datasets import Dataset

from probe_callback.capture.rows import RowIndex, RowSet, pair_key, truncate


def _rows(n: int = 60) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        p, c, r = (rng.integers(1, 40, rng.integers(1, 6)).tolist() for _ in range(3))
        if i in (20, 41):  # exact copies of row 3: one key, handed out round-robin
            p, c, r = out[3]["prompt_ids"], out[3]["chosen_ids"], out[3]["rejected_ids"]
        out.append(
            {
                "prompt_ids": p,
                "chosen_ids": c,
                "rejected_ids": r,
                "id": f"r{i}",
                "source": None if i % 7 == 0 else "ab"[i % 2],
                "prompt": [{"role": "user", "content": f"q{i % 10}"}],
                "chosen": f"yes {i}",
                "rejected": f"no {i}",
            }
        )
    return out


def _batch(pairs: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
    seqs = [c for c, _ in pairs] + [r for _, r in pairs]
    width = max(len(s) for s in seqs)
    ids, mask = torch.zeros(len(seqs), width, dtype=torch.long), torch.zeros(len(seqs), width)
    for k, s in enumerate(seqs):
        ids[k, : len(s)], mask[k, : len(s)] = torch.tensor(s), 1
    return ids, mask


@pytest.mark.parametrize("shuffled", [False, True])
def test_row_index_reads_texts_from_the_dataset_and_finds_every_row(shuffled):
    rows = _rows()
    dataset = Dataset.from_list(rows).filter(lambda x: len(x["prompt_ids"]) != 2)  # an index mapping, as TRL's
    if shuffled:
        dataset = dataset.shuffle(seed=1)
    index = RowIndex.from_dataset(dataset, max_length=6, truncation_mode="keep_end", batch_size=16)
    kept = sorted(int(r) for r in index.order)
    assert kept == [i for i, r in enumerate(rows) if len(r["prompt_ids"]) != 2]
    assert index._texts == {} and index._ids is None, "no copy of the texts or ids"
    assert index.duplicates == sum(1 for i in (3, 20, 41) if i in kept) - 1

    for row in range(index.n_rows + 1):
        known = row in kept
        expected = rows[row] if known else {}
        assert index.describe(row) == {"row": row, "id": expected.get("id"), "source": expected.get("source")}
        assert index.text(row, "prompt") == (f"user: q{row % 10}" if known else "")
        assert index.text(row, "chosen") == expected.get("chosen", "")
    assert index.sources_array().tolist() == [rows[r]["source"] if r in kept else None for r in range(index.n_rows)]
    assert index.rows_with_prompts(["user: q3", "nothing"]) == [[r for r in kept if r % 10 == 3], []]

    def pair(r: int) -> tuple[list[int], list[int]]:
        p = rows[r]["prompt_ids"]
        return truncate(p + rows[r]["chosen_ids"], 6, "keep_end"), truncate(p + rows[r]["rejected_ids"], 6, "keep_end")

    found = index.lookup(*_batch([pair(r) for r in kept] + [([99], [98])]))
    copies = [r for r in (3, 20, 41) if r in kept]
    assert found[-1] == -1
    assert [f for f, r in zip(found, kept) if r not in copies] == [r for r in kept if r not in copies]
    again = index.lookup(*_batch([pair(3)] * 2 * len(copies)))
    assert sorted(again.tolist()) == sorted(copies * 2), "identical pairs are handed out in turn"


def test_row_index_from_lists_and_row_set():
    index = RowIndex([pair_key([1, 2], [1, 3])], np.array([5]), ids=["a"], sources=["web"], texts={"prompt": ["hi"]})
    assert index.describe(5) == {"row": 5, "id": "a", "source": "web"} and index.text(5, "prompt") == "hi"
    assert index.describe(2) == {"row": 2, "id": None, "source": None} and index.text(5, "chosen") == ""
    assert index.rows_with_prompts(["hi"]) == [[5]]
    seen = RowSet(np.array([4, 9]))
    seen.update(int(r) for r in [9, 1000])
    assert len(seen) == 3 and 1000 in seen and 5 not in seen and -1 not in seen
    assert seen.contains(np.array([4, 5, 10**9, -3])).tolist() == [True, False, False, False]
