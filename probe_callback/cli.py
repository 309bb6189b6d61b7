"""The `probe-callback` command line (also `python -m probe_callback`).

Verbs live in `COMMANDS` (name -> `Command`); add one by registering a `Command` there.

Example:
    >>> main(["report", "runs/none/probe_callback"])  # one line on stderr, exit code 2: no report there
    2
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from probe_callback.publish.report import load_report, summary_text, write_html


@dataclass(frozen=True)
class Command:
    """One verb: its one-line help, how it adds its arguments, and what it runs (returns an exit code)."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("output_dir", type=Path, help="the callback's output_dir (holds report.json)")


def _report(args: argparse.Namespace) -> int:
    report = load_report(args.output_dir)
    folder = args.output_dir if args.output_dir.is_dir() else args.output_dir.parent
    try:
        page, summary = write_html(report, folder), summary_text(report)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{args.output_dir} is not a well-formed probe_callback report ({exc!r})") from exc
    print(page)
    print(summary)
    return 0


def _mitigate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--report", required=True, type=Path, help="report.json or the folder holding it")
    p.add_argument("--dataset", required=True, type=Path, help="the train dataset: .jsonl, .parquet or folder")
    p.add_argument("--action", required=True, choices=["filter", "swap", "drop-source"])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--top-k", type=int, help="rows to change (drop-source: sources to drop)")
    size.add_argument("--top-frac", type=float, help="fraction of the dataset (drop-source: share of top rows)")
    p.add_argument("--behaviour", action="append", dest="behaviours", help="act on this behaviour (repeatable)")
    p.add_argument("--source", action="append", dest="sources", help="drop-source: drop this source (repeatable)")
    p.add_argument("--source-column", default="source", help="the dataset's source column (default: source)")
    p.add_argument("-o", "--out", required=True, type=Path, help="output: .jsonl, .parquet, otherwise a folder")


def _mitigate(args: argparse.Namespace) -> int:
    import datasets

    from probe_callback.mitigate import check_output_path, mitigate, save_dataset, write_manifest

    datasets.disable_progress_bars()  # stderr keeps to the one line an error needs
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    if args.sources and args.action != "drop-source":
        raise ValueError("--source only goes with --action drop-source")
    check_output_path(args.out, args.dataset)
    ds, manifest = mitigate(
        args.report,
        args.dataset,
        args.action,
        top_k=args.top_k,
        top_frac=args.top_frac,
        behaviours=args.behaviours,
        source_column=args.source_column,
        sources=args.sources,
    )
    out = save_dataset(ds, args.out)
    manifest_file = write_manifest(manifest, out)
    print(
        f"{args.action}: {manifest['rows_changed']} rows changed, "
        f"{manifest['rows_before']} -> {manifest['rows_after']} rows"
    )
    print(f"dataset: {out}\nmanifest: {manifest_file}")
    return 0


COMMANDS: dict[str, Command] = {
    "report": Command("rebuild report.html from report.json and print a summary", _report_args, _report),
    "mitigate": Command("write a cleaned dataset from a report", _mitigate_args, _mitigate),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subcommand per entry of `COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="probe-callback", description="Inspect probe_callback reports and clean training data."
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name, command in COMMANDS.items():
        sub = verbs.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return its exit code.

    Bad input exits 2, any other failure 1, each with one line on stderr: never a traceback.
    """
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (OSError, ValueError) as exc:
        return _fail(args.verb, str(exc), 2)
    except Exception as exc:
        return _fail(args.verb, f"unexpected {type(exc).__name__}: {exc}", 1)


def _fail(verb: str, message: str, code: int) -> int:
    print(f"probe-callback {verb}: error: {' '.join(message.split())}", file=sys.stderr)
    return code
