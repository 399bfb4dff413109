"""The ``workbench`` command line. Thin: every command calls a function that tests call too.

    workbench [--workspace DIR] sources
    workbench [--workspace DIR] ingest SOURCE ROOT
    workbench [--workspace DIR] stats [--by-source] [--format table|csv|json]
    workbench [--workspace DIR] export abdomenatlas OUT [--source ID ...] [--class NAME ...]
    workbench [--workspace DIR] demo [--cases N]

The workspace is ``--workspace``, else ``$WORKBENCH_HOME``, else ``./workspace``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import pandas as pd

from harmonize.errors import HarmonizeError
from harmonize.protocols import all_protocols
from harmonize.taxonomy import class_names
from storage.catalog import CatalogBusy, CatalogError
from storage.workspace import Workspace


def sources_table() -> pd.DataFrame:
    """One row per built-in source: id, name, layout, annotated classes, merged pairs."""
    rows = []
    for p in all_protocols().values():
        rows.append(
            {
                "source": p.id,
                "name": p.name,
                "layout": p.layout.kind,
                "n_classes": len(p.annotated),
                "annotated": ", ".join(p.annotated),
                "split": ", ".join(p.merged_pairs),
            }
        )
    return pd.DataFrame(rows)


def stats_table(ws: Workspace, by_source: bool = False) -> pd.DataFrame:
    """The long-tail table: per class (and source) annotated / present / absent / not-annotated scans.

    Without ``by_source`` every one of the 32 classes has a row (zeros where nothing is known), plus one
    column per source with the number of scans of that source that annotate the class.
    """
    long = ws.catalog.long_tail(by_source=True)
    if by_source:
        return long
    cols = ["annotated", "present", "absent", "not_annotated"]
    total = long.groupby("class_name")[cols].sum() if not long.empty else pd.DataFrame(columns=cols)
    table = total.reindex(class_names(), fill_value=0)
    if not long.empty:
        per_source = long.pivot_table(
            index="class_name", columns="source_id", values="annotated", aggfunc="sum", fill_value=0
        )
        table = table.join(per_source.reindex(class_names(), fill_value=0))
    table.index.name = "class"
    return table.reset_index().astype({c: "int64" for c in table.columns})


def _print_table(df: pd.DataFrame, fmt: str) -> None:
    if fmt == "csv":
        sys.stdout.write(df.to_csv(index=False))
    elif fmt == "json":
        sys.stdout.write(df.to_json(orient="records", indent=1) + "\n")
    else:
        with pd.option_context(
            "display.max_rows",
            None,
            "display.max_columns",
            None,
            "display.width",
            250,
            "display.max_colwidth",
            120,
        ):
            print(df.to_string(index=False))


def _cmd_sources(args: argparse.Namespace) -> int:
    _print_table(sources_table(), args.format)
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    from workbench.ingest import ingest

    ws = Workspace.open(args.workspace)
    summary = ingest(ws, args.source, args.root, progress=not args.no_progress)
    for line in summary.lines():
        print(line)
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    ws = Workspace.open(args.workspace)
    _print_table(stats_table(ws, by_source=args.by_source), args.format)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from workbench.export import export_abdomenatlas

    ws = Workspace.open(args.workspace)
    manifest = export_abdomenatlas(
        ws, args.out, sources=args.source, classes=args.classes, progress=not args.no_progress
    )
    print(f"exported {len(manifest['cases'])} cases to {args.out} (manifest.json lists files and hashes)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from workbench.demo import build_demo

    ws = Workspace.open(args.workspace)
    for line in build_demo(ws, cases_per_source=args.cases, progress=not args.no_progress):
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workbench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workspace", help="workspace folder (default: $WORKBENCH_HOME or ./workspace)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sources", help="list the built-in sources and the classes each annotates")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.set_defaults(func=_cmd_sources)

    p = sub.add_parser("ingest", help="harmonize a dataset folder into the workspace")
    p.add_argument("source", help="source id (see `workbench sources`)")
    p.add_argument("root", help="the dataset folder, in its published layout")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser("stats", help="per-class long-tail table")
    p.add_argument("--by-source", action="store_true", help="one row per class x source")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.set_defaults(func=_cmd_stats)

    p = sub.add_parser("export", help="export harmonized labels")
    p.add_argument("format", choices=("abdomenatlas",))
    p.add_argument("out", help="output folder")
    p.add_argument("--source", action="append", help="only this source (repeatable)")
    p.add_argument("--class", dest="classes", action="append", help="only this class (repeatable)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("demo", help="build the demo workspace from synthetic phantoms")
    p.add_argument("--cases", type=int, default=3, help="phantom cases per source")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``workbench`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (HarmonizeError, KeyError, CatalogBusy, CatalogError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"workbench: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
