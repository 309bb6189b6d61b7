"""Turn a report into a cleaned training set: filter the blamed rows, swap their labels, or drop sources.

`row` in the report is the index into the dataset passed as `train_dataset`, so the same dataset
(same order) must be given here; ids are checked when the dataset has an `id` column.

Example:
    >>> from datasets import Dataset
    >>> ds = Dataset.from_dict({"prompt": ["a", "b", "c"], "chosen": ["x", "y", "z"],
    ...                         "rejected": ["1", "2", "3"]})
    >>> report = {"behaviours": [{"name": "spam", "flagged_at_step": 4,
    ...     "top_rows": [{"row": 1, "score": 0.9, "source": None}]}]}
    >>> clean, manifest = mitigate(report, ds, "filter", top_k=1)
    >>> list(clean["prompt"]), manifest["rows_after"]
    (['a', 'c'], 2)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Literal

from datasets import Dataset, DatasetDict, load_from_disk

from probe_callback.publish.report import check_report, jsonable, load_report
from probe_callback.store.files import atomic_write_text

Action = Literal["filter", "swap", "drop-source"]
ACTIONS: tuple[str, ...] = ("filter", "swap", "drop-source")


def load_dataset_file(path: str | Path) -> Dataset:
    """Load a dataset from `.jsonl`/`.json`, `.parquet`, or a `Dataset.save_to_disk` folder.

    Example:
        >>> load_dataset_file("missing.csv")
        Traceback (most recent call last):
        ...
        FileNotFoundError: dataset missing.csv not found: give a .jsonl, .parquet or save_to_disk folder
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset {path} not found: give a .jsonl, .parquet or save_to_disk folder")
    if path.is_file() and path.suffix not in (".jsonl", ".json", ".parquet"):
        raise ValueError(f"cannot read {path}: use .jsonl, .json, .parquet or a save_to_disk folder")
    try:
        loaded = _read_dataset(path)
    except Exception as e:  # datasets' parse errors: name the file and the first real cause
        cause = e.__cause__ or e
        raise ValueError(
            f"cannot read dataset {path}: {str(cause).splitlines()[0] if str(cause) else 'is it empty?'}"
        ) from e
    if isinstance(loaded, DatasetDict):
        if "train" not in loaded:
            raise ValueError(f"{path} holds splits {list(loaded)} but no 'train': point at the train split")
        loaded = loaded["train"]
    if len(loaded) == 0:
        raise ValueError(f"dataset {path} has no rows: pass the train_dataset the report was made from")
    return loaded


def _read_dataset(path: Path) -> Dataset | DatasetDict:
    if path.is_dir():
        return load_from_disk(str(path))
    if path.stat().st_size == 0:
        raise ValueError("the file is empty")
    if path.suffix == ".parquet":
        return Dataset.from_parquet(str(path))
    return Dataset.from_json(str(path))


def check_output_path(out: str | Path, dataset: str | Path | None = None) -> Path:
    """Refuse an output that is an existing folder or the input dataset itself; returns `out` as a Path.

    Example:
        >>> check_output_path("/tmp")
        Traceback (most recent call last):
        ...
        ValueError: output /tmp is an existing folder: give a new path (.jsonl, .parquet or a new folder)
    """
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"output {out} is an existing folder: give a new path (.jsonl, .parquet or a new folder)")
    if dataset is not None and out.exists() and out.resolve() == Path(dataset).resolve():
        raise ValueError(f"output {out} is the input dataset: write the cleaned data to a new path")
    return out


def save_dataset(ds: Dataset, out: str | Path) -> Path:
    """Save `ds` in the format `out`'s suffix names: `.jsonl`, `.parquet`, otherwise a folder."""
    out = check_output_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".jsonl":
        ds.to_json(str(out), lines=True, force_ascii=False)
    elif out.suffix == ".parquet":
        ds.to_parquet(str(out))
    else:
        ds.save_to_disk(str(out))
    return out


def manifest_path(out: str | Path) -> Path:
    """Where `out`'s manifest goes: `OUT.manifest.json` next to a file, `OUT/manifest.json` in a folder."""
    out = Path(out)
    return out / "manifest.json" if out.suffix not in (".jsonl", ".parquet") else Path(f"{out}.manifest.json")


def write_manifest(manifest: dict[str, Any], out: str | Path) -> Path:
    """Atomically write `manifest` for the dataset saved at `out` (see `manifest_path`)."""
    return atomic_write_text(manifest_path(out), json.dumps(jsonable(manifest), indent=1, ensure_ascii=False) + "\n")


def _behaviours(report: Mapping[str, Any], names: list[str] | None) -> list[dict[str, Any]]:
    all_b = report.get("behaviours") or []
    if names:
        unknown = sorted(set(names) - {b.get("name") for b in all_b})
        if unknown:
            known = [b.get("name") for b in all_b]
            raise ValueError(f"behaviours {unknown} are not in the report; it has {known}")
        return [b for b in all_b if b.get("name") in names]
    flagged = [b for b in all_b if b.get("flagged_at_step") is not None]
    if not flagged:
        raise ValueError(
            "no behaviour in the report was flagged (flagged_at_step is null everywhere): "
            "nothing to mitigate; name behaviours explicitly to act on unflagged ones"
        )
    return flagged


def _entries(behaviour: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """`behaviour[key]` (top_rows / top_sources): a list of objects, else a clear error."""
    entries = behaviour.get(key) or []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError(f"behaviour {behaviour.get('name')!r}: {key} must be a list of objects, got {entries!r:.80}")
    return entries


def _score(entry: dict[str, Any], where: str) -> float | None:
    """The entry's score, or None (the entry is skipped) when it is missing or not finite."""
    score = entry.get("score")
    if score is not None and (not isinstance(score, Real) or isinstance(score, bool)):
        raise ValueError(f"{where} has score {score!r}: a report score must be a number")
    return float(score) if score is not None and math.isfinite(score) else None


def _ranked_rows(behaviours: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Top rows of all `behaviours`, one per row index (its best score), best first; no score, no rank."""
    best: dict[int, dict[str, Any]] = {}
    for b in behaviours:
        for i, r in enumerate(_entries(b, "top_rows")):
            where, row = f"behaviour {b.get('name')!r}: top_rows[{i}]", r.get("row")
            if not isinstance(row, Integral) or isinstance(row, bool) or row < 0:
                raise ValueError(f"{where} has row {row!r}: a report row must be a row index (an integer >= 0)")
            index, score = int(row), _score(r, where)
            if score is not None and (index not in best or score > best[index]["score"]):
                best[index] = {**r, "row": index, "score": score}
    if not best:
        names = [b.get("name") for b in behaviours]
        raise ValueError(f"the report lists no top_rows for {names} (none with a finite score): nothing to rank")
    return sorted(best.values(), key=lambda r: -r["score"])


def _ranked_sources(behaviours: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Top sources of all `behaviours`, one per source (its best score), best first; no score, no rank."""
    best: dict[str, dict[str, Any]] = {}
    for b in behaviours:
        for i, s in enumerate(_entries(b, "top_sources")):
            where = f"behaviour {b.get('name')!r}: top_sources[{i}]"
            share = s.get("share_in_top") or 0.0
            if not isinstance(share, Real) or isinstance(share, bool):
                raise ValueError(f"{where} has share_in_top {share!r}: it must be a number")
            name, score = s.get("source"), _score(s, where)
            if name is not None and score is not None and (str(name) not in best or score > best[str(name)]["score"]):
                share = float(share) if math.isfinite(share) else 0.0
                best[str(name)] = {**s, "source": str(name), "score": score, "share_in_top": share}
    if not best:
        raise ValueError("the report blames no source (top_sources is empty): use --action filter or swap")
    return sorted(best.values(), key=lambda s: -s["score"])


def _pick_rows(ranked: list[dict[str, Any]], n_rows: int, top_k: int | None, top_frac: float | None) -> list[dict]:
    if (top_k is None) == (top_frac is None):
        raise ValueError("give exactly one of top_k (number of rows) or top_frac (fraction of the dataset)")
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1 (got {top_k})")
        return ranked[:top_k]
    if top_frac is None or not 0 < top_frac <= 1:  # (not None: exactly one of the two is given)
        raise ValueError(f"top_frac must be in (0, 1] (got {top_frac})")
    return ranked[: max(1, round(top_frac * n_rows))]


def _pick_sources(ranked: list[dict[str, Any]], top_k: int | None, top_frac: float | None) -> list[str]:
    """By default the top source; top_k = that many; top_frac = the fewest covering that share of top rows."""
    if top_k is not None and top_frac is not None:
        raise ValueError("give at most one of top_k (number of sources) or top_frac (share of top rows to cover)")
    if top_frac is not None:
        if not 0 < top_frac <= 1:
            raise ValueError(f"top_frac must be in (0, 1] (got {top_frac})")
        picked, covered = [], 0.0
        for s in ranked:
            if covered >= top_frac:
                break
            picked.append(s["source"])
            covered += s["share_in_top"]
        return picked
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 (got {top_k})")
    return [s["source"] for s in ranked[: top_k or 1]]


def _check_rows(ds: Dataset, rows: list[dict[str, Any]]) -> None:
    """Fail if a report row cannot be this dataset's row: index out of range or a different `id`."""
    for r in rows:
        if not 0 <= int(r["row"]) < len(ds):
            raise ValueError(
                f"report row {r['row']} is out of range for a dataset of {len(ds)} rows: "
                "this is probably not the train_dataset the report was made from"
            )
    if "id" in ds.column_names:
        ids = ds.select([int(r["row"]) for r in rows])["id"]
        for r, actual in zip(rows, ids, strict=True):
            if r.get("id") is not None and r["id"] != actual:
                raise ValueError(
                    f"report row {r['row']} has id {r['id']!r} but the dataset's row has id {actual!r}: "
                    "pass the train_dataset the report was made from, unshuffled"
                )


def _row_record(ds: Dataset, index: int, source_column: str) -> dict[str, Any]:
    row = ds[index]
    return {"index": index, "id": row.get("id"), "source": row.get(source_column)}


def mitigate(
    report: dict[str, Any] | str | Path,
    dataset: Dataset | str | Path,
    action: Action,
    top_k: int | None = None,
    top_frac: float | None = None,
    behaviours: list[str] | None = None,
    source_column: str = "source",
    sources: list[str] | None = None,
) -> tuple[Dataset, dict[str, Any]]:
    """Apply `action` to the rows (or sources) the report blames; returns the new dataset and a manifest.

    - `filter`: remove the top rows (`top_k` of them, or `top_frac` of the dataset's size).
    - `swap`: exchange `chosen` and `rejected` of those rows.
    - `drop-source`: remove every row of the blamed sources (default the top one; `top_k` sources,
      or `top_frac` = the fewest top sources that together hold that share of the top rows), or the
      named `sources`. Sources are compared as text, as the report writes them.

    Behaviours default to those flagged in the report. See the module example.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}: use one of {', '.join(ACTIONS)}")
    report_path = None if isinstance(report, dict) else str(report)
    dataset_path = None if isinstance(dataset, Dataset) else str(dataset)
    loaded = check_report(report) if isinstance(report, dict) else load_report(report)
    ds = dataset if isinstance(dataset, Dataset) else load_dataset_file(dataset)
    chosen = _behaviours(loaded, behaviours)
    manifest: dict[str, Any] = {
        "action": action,
        "report": report_path,
        "dataset": dataset_path,
        "behaviours": [b.get("name") for b in chosen],
        "top_k": top_k,
        "top_frac": top_frac,
        "rows_before": len(ds),
    }

    if action == "drop-source":
        changed, manifest["sources"] = _blamed_source_rows(ds, chosen, source_column, sources, top_k, top_frac)
    else:
        rows = _pick_rows(_ranked_rows(chosen), len(ds), top_k, top_frac)
        _check_rows(ds, rows)
        changed = sorted(int(r["row"]) for r in rows)
    manifest["rows"] = [_row_record(ds, i, source_column) for i in changed]
    ds = _apply(ds, action, changed)
    manifest["rows_changed"] = len(changed)
    manifest["rows_after"] = len(ds)
    return ds, manifest


def _blamed_source_rows(
    ds: Dataset,
    chosen: list[dict[str, Any]],
    source_column: str,
    sources: list[str] | None,
    top_k: int | None,
    top_frac: float | None,
) -> tuple[list[int], list[str]]:
    """The rows of the sources to drop (the named ``sources``, else the report's top ones) and those sources."""
    if source_column not in ds.column_names:
        raise ValueError(
            f"the dataset has no {source_column!r} column (columns: {ds.column_names}): "
            "pass source_column / --source-column, or use --action filter"
        )
    values = [str(s) for s in ds[source_column]]
    if sources:
        sources = [str(s) for s in sources]
        if top_k is not None or top_frac is not None:
            raise ValueError("give either sources (--source) or top_k / top_frac, not both")
        unknown = sorted(set(sources) - set(values))
        if unknown:
            raise ValueError(f"no such source {unknown} in {source_column!r}; the dataset has {sorted(set(values))}")
    else:
        sources = _pick_sources(_ranked_sources(chosen), top_k, top_frac)
    blamed = set(sources)
    return [i for i, s in enumerate(values) if s in blamed], sources


def _apply(ds: Dataset, action: Action, changed: list[int]) -> Dataset:
    """``ds`` with the ``changed`` rows swapped (``swap``) or removed (``filter``, ``drop-source``)."""
    if action == "swap":
        missing = {"chosen", "rejected"} - set(ds.column_names)
        if missing:
            raise ValueError(f"cannot swap: the dataset lacks {sorted(missing)} (columns: {ds.column_names})")
        targets = set(changed)
        return ds.map(
            lambda row, i: {"chosen": row["rejected"], "rejected": row["chosen"]} if i in targets else row,
            with_indices=True,
        )
    drop = set(changed)
    return ds.select([i for i in range(len(ds)) if i not in drop])
