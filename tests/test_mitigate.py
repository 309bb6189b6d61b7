"""mitigate: filter / swap / drop-source on a small dataset, file formats, manifests and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict

from probe_callback.mitigate import (
    check_output_path,
    load_dataset_file,
    manifest_path,
    mitigate,
    save_dataset,
    write_manifest,
)
from probe_callback.publish.report import write_report

SOURCES = ["web", "planted", "books", "planted", "web", "planted", "books", "web", "planted", "books"]


def dataset() -> Dataset:
    return Dataset.from_dict(
        {
            "id": [f"r{i}" for i in range(10)],
            "source": SOURCES,
            "prompt": [f"question {i}" for i in range(10)],
            "chosen": [f"good {i}" for i in range(10)],
            "rejected": [f"bad {i}" for i in range(10)],
        }
    )


def report(flagged: int | None = 30) -> dict:
    rows = [
        {"row": i, "id": f"r{i}", "score": s, "source": "planted", "step": 20}
        for i, s in [(5, 0.9), (1, 0.8), (8, 0.7)]
    ]
    return {
        "version": 1,
        "behaviours": [
            {
                "name": "promo",
                "kind": "supervised",
                "flagged_at_step": flagged,
                "top_rows": rows + [{"row": 3, "id": "r3", "score": 0.6, "source": "planted", "step": 20}],
                "top_sources": [
                    {"source": "planted", "score": 0.5, "share_in_top": 0.75, "n_rows": 4},
                    {"source": "web", "score": 0.1, "share_in_top": 0.25, "n_rows": 3},
                ],
            },
            {
                "name": "quiet",
                "kind": "emergent",
                "flagged_at_step": None,
                "top_rows": [{"row": 0, "id": "r0", "score": 0.95}],
            },
        ],
    }


def test_filter_removes_the_top_rows_of_flagged_behaviours() -> None:
    clean, manifest = mitigate(report(), dataset(), "filter", top_k=2)
    assert list(clean["id"]) == [f"r{i}" for i in (0, 2, 3, 4, 6, 7, 8, 9)]  # r0 belongs to an unflagged behaviour
    assert manifest["rows"] == [
        {"index": 1, "id": "r1", "source": "planted"},
        {"index": 5, "id": "r5", "source": "planted"},
    ]
    assert (manifest["rows_before"], manifest["rows_changed"], manifest["rows_after"]) == (10, 2, 8)
    assert manifest["behaviours"] == ["promo"] and manifest["action"] == "filter"


def test_top_frac_is_a_fraction_of_the_dataset() -> None:
    clean, manifest = mitigate(report(), dataset(), "filter", top_frac=0.3)
    assert [r["index"] for r in manifest["rows"]] == [1, 5, 8] and len(clean) == 7


def test_swap_exchanges_chosen_and_rejected_only_for_the_top_rows() -> None:
    clean, manifest = mitigate(report(), dataset(), "swap", top_k=1)
    assert clean[5]["chosen"] == "bad 5" and clean[5]["rejected"] == "good 5"
    assert clean[4]["chosen"] == "good 4" and len(clean) == 10 and manifest["rows_changed"] == 1


def test_drop_source_defaults_to_the_top_source_and_can_cover_a_share() -> None:
    clean, manifest = mitigate(report(), dataset(), "drop-source")
    assert manifest["sources"] == ["planted"] and "planted" not in set(clean["source"]) and len(clean) == 6
    assert [r["index"] for r in manifest["rows"]] == [1, 3, 5, 8]
    _, manifest = mitigate(report(), dataset(), "drop-source", top_frac=0.9)
    assert manifest["sources"] == ["planted", "web"] and manifest["rows_after"] == 3
    _, manifest = mitigate(report(), dataset(), "drop-source", top_k=2)
    assert manifest["sources"] == ["planted", "web"]


def test_explicit_behaviours_can_target_an_unflagged_one() -> None:
    clean, _ = mitigate(report(), dataset(), "filter", top_k=5, behaviours=["quiet"])
    assert list(clean["id"]) == [f"r{i}" for i in range(1, 10)]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ""])
def test_file_round_trip_and_manifest(tmp_path: Path, suffix: str) -> None:
    source = save_dataset(dataset(), tmp_path / f"train{suffix or '_dir'}")
    write_report(report(), tmp_path / "run")
    clean, manifest = mitigate(tmp_path / "run", source, "filter", top_k=3)
    assert manifest["report"] == str(tmp_path / "run") and manifest["dataset"] == str(source)
    out = save_dataset(clean, tmp_path / f"clean{suffix or '_dir'}")
    written = write_manifest(manifest, out)
    assert written == manifest_path(out) and written.exists()
    assert written.name == ("manifest.json" if not suffix else f"clean{suffix}.manifest.json")
    assert json.loads(written.read_text())["rows_after"] == 7
    reloaded = load_dataset_file(out)
    assert list(reloaded["id"]) == list(clean["id"]) and reloaded.column_names == dataset().column_names


def test_loads_the_train_split_of_a_dataset_dict(tmp_path: Path) -> None:
    DatasetDict({"train": dataset(), "test": dataset().select([0])}).save_to_disk(str(tmp_path / "dd"))
    assert len(load_dataset_file(tmp_path / "dd")) == 10


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"action": "delete", "top_k": 1}, "unknown action 'delete': use one of filter, swap, drop-source"),
        ({"action": "filter"}, "exactly one of top_k"),
        ({"action": "filter", "top_k": 1, "top_frac": 0.1}, "exactly one of top_k"),
        ({"action": "drop-source", "top_k": 1, "top_frac": 0.1}, "at most one of top_k"),
        ({"action": "filter", "top_frac": 1.5}, r"top_frac must be in \(0, 1\]"),
        (
            {"action": "filter", "top_k": 1, "behaviours": ["nope"]},
            r"behaviours \['nope'\] are not in the report",
        ),
    ],
)
def test_argument_errors_name_the_fix(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mitigate(report(), dataset(), **kwargs)


def test_dataset_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match="out of range for a dataset of 4 rows: this is probably not the train_dataset"
    ):
        mitigate(report(), dataset().select(range(4)), "filter", top_k=3)
    with pytest.raises(ValueError, match="has id 'r5' but the dataset's row has id 'r4'"):
        mitigate(report(), dataset().select(range(9, -1, -1)), "filter", top_k=1)
    with pytest.raises(ValueError, match="cannot swap: the dataset lacks \\['chosen'\\]"):
        mitigate(report(), dataset().remove_columns("chosen"), "swap", top_k=1)
    with pytest.raises(ValueError, match="no 'source' column"):
        mitigate(report(), dataset().remove_columns("source"), "drop-source")
    with pytest.raises(ValueError, match="no behaviour in the report was flagged"):
        mitigate(report(flagged=None), dataset(), "filter", top_k=1)
    with pytest.raises(FileNotFoundError, match="dataset .* not found"):
        mitigate(report(), tmp_path / "missing.jsonl", "filter", top_k=1)


def test_no_top_rows_is_a_clear_error() -> None:
    bare = {"behaviours": [{"name": "promo", "flagged_at_step": 3, "top_rows": []}]}
    with pytest.raises(ValueError, match="lists no top_rows for \\['promo'\\]"):
        mitigate(bare, dataset(), "filter", top_k=1)


def test_non_finite_scores_never_rank() -> None:
    crafted = report()
    crafted["behaviours"][0]["top_rows"] += [{"row": 9, "score": float("nan")}, {"row": 7, "score": None}]
    crafted["behaviours"][0]["top_sources"].insert(0, {"source": "books", "score": float("nan"), "share_in_top": 1})
    clean, manifest = mitigate(crafted, dataset(), "filter", top_k=1)
    assert [r["index"] for r in manifest["rows"]] == [5]
    _, manifest = mitigate(crafted, dataset(), "drop-source")
    assert manifest["sources"] == ["planted"]


def test_drop_named_sources() -> None:
    clean, manifest = mitigate(report(), dataset(), "drop-source", sources=["web", "books"])
    assert set(clean["source"]) == {"planted"} and manifest["sources"] == ["web", "books"]
    with pytest.raises(ValueError, match=r"no such source \['nope'\] in 'source'; the dataset has \['books', "):
        mitigate(report(), dataset(), "drop-source", sources=["nope"])
    with pytest.raises(ValueError, match="not both"):
        mitigate(report(), dataset(), "drop-source", sources=["web"], top_k=1)


def test_output_may_not_be_a_folder_or_the_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is an existing folder"):
        save_dataset(dataset(), tmp_path)
    save_dataset(dataset(), tmp_path / "train.jsonl")
    with pytest.raises(ValueError, match="is the input dataset"):
        check_output_path(tmp_path / "train.jsonl", tmp_path / "train.jsonl")
