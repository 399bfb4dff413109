"""The ``workbench`` command line. Thin: every command calls a function that tests call too.

    workbench [--workspace DIR] sources
    workbench [--workspace DIR] ingest SOURCE ROOT
    workbench [--workspace DIR] stats [--by-source] [--format table|csv|json]
    workbench [--workspace DIR] gc [--dry-run] [--min-age-s S]
    workbench [--workspace DIR] backup OUT [--link]
    workbench [--workspace DIR] restore BACKUP [WORKSPACE] [--force] [--link]
    workbench [--workspace DIR] check [--json] [--quick] [--repair-from BACKUP]
    workbench [--workspace DIR] export abdomenatlas|nnunet|monai OUT [--source ID ...] [--class NAME ...]
                                [--origin ORIGIN ...] [--folds K] [--seed N]
    workbench [--workspace DIR] demo [--cases N] [--no-round] [--budget N]
    workbench [--workspace DIR] round --vocabulary NAME [--steps N] [--previous CKPT] [--from-scratch]
                                [--simulated-expert --budget N]
    workbench [--workspace DIR] pseudolabel CHECKPOINT [--scan ID ...] [--source ID ...] [--all-classes]
                                [--low-res-mm MM | --native] [--overlap F] [--device auto|cpu|cuda]
                                [--ray [ADDRESS]] [--workers N]
    workbench [--workspace DIR] queue [--top N] [--run RUN_ID] [--long-tail-boost B]
    workbench [--workspace DIR] evaluate RUN_ID [--tolerance-mm MM] [--fraction F] [--seed N]
                                [--min-tumour-voxels N]
    workbench [--workspace DIR] embed [--encoder minilm|clip] [--clip-weights FILE|TAG] [--template V1..V4]
                                [--name NAME] [--import-release TXT_ENCODING_PTH]
    workbench [--workspace DIR] train --vocabulary NAME [--backbone B] [--spacing MM] [--patch N]
                                [--epochs N] [--max-steps N] [--source ID ...] [--fresh]

The workspace is ``--workspace``, else ``$WORKBENCH_HOME``, else ``./workspace``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import pandas as pd

from harmonize.errors import HarmonizeError
from harmonize.protocols import sources_table
from storage.catalog import CatalogBusy, CatalogError
from storage.workspace import ORPHAN_MIN_AGE_S, Workspace, resolve_workspace


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


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _cmd_ingest(args: argparse.Namespace) -> int:
    from workbench.ingest import ingest

    ws = Workspace.open(args.workspace)
    summary = ingest(
        ws,
        args.source,
        args.root,
        progress=not args.no_progress,
        hash_case_ids=args.hash_case_ids,
        workers=args.workers,
        ray_address=args.ray,
        batch_size=args.batch_size,
    )
    for line in summary.lines():
        print(line)
    return 1 if summary.skipped else 0  # a script must not take a partial ingest for a whole one


def _cmd_gc(args: argparse.Namespace) -> int:
    ws = Workspace.open(args.workspace)
    found = ws.collect_garbage(min_age_s=args.min_age_s, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for path in found:
        print(f"{verb} {path}")
    print(f"{verb} {len(found)} file(s) no committed label set references (older than {args.min_age_s:g} s)")
    return 0


def _existing_workspace(path: str | None) -> Workspace:
    """The workspace at ``path`` (see :func:`resolve_workspace`); one without a catalog is refused, not
    created (backing up or checking an empty folder is a mistake in the path)."""
    root = resolve_workspace(path)
    if not (root / "catalog.duckdb").is_file():
        raise CatalogError(f"{root}: no workspace here (no catalog.duckdb); pass --workspace DIR")
    return Workspace.open(root)


def _cmd_backup(args: argparse.Namespace) -> int:
    from storage.backup import backup_workspace

    result = backup_workspace(_existing_workspace(args.workspace), args.out, link=args.link)
    for line in result.lines():
        print(line)
    return 1 if result.missing else 0


def _cmd_restore(args: argparse.Namespace) -> int:
    from storage.backup import restore_backup

    target = resolve_workspace(args.target or args.workspace)
    for line in restore_backup(args.backup, target, force=args.force, link=args.link).lines():
        print(line)
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from storage.check import check_workspace

    ws = _existing_workspace(args.workspace)
    report = check_workspace(ws, decode=not args.quick)
    if args.repair_from and report.problems:
        from storage.backup import repair_masks

        for line in repair_masks(ws, args.repair_from, report.problems):
            print(line, file=sys.stderr if args.json else sys.stdout)
        report = check_workspace(ws, decode=not args.quick)
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        for line in report.lines():
            print(line)
    return 0 if report.ok else 1


def _cmd_stats(args: argparse.Namespace) -> int:
    ws = Workspace.open(args.workspace)
    _print_table(ws.catalog.long_tail_table(by_source=args.by_source), args.format)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from workbench.export import export_abdomenatlas, export_monai, export_nnunet
    from workbench.export.skipped import skip_line

    ws = Workspace.open(args.workspace)
    origins = args.origin or ["revised", "original", "pseudo"]
    if args.format == "nnunet":
        manifest = export_nnunet(
            ws,
            args.out,
            sources=args.source,
            classes=args.classes,
            origins=origins,
            progress=not args.no_progress,
        )
    elif args.format == "monai":
        manifest = export_monai(
            ws,
            args.out,
            sources=args.source,
            classes=args.classes,
            origins=origins,
            n_folds=args.folds,
            seed=args.seed,
            progress=not args.no_progress,
        )
    else:
        manifest = export_abdomenatlas(
            ws, args.out, sources=args.source, classes=args.classes, progress=not args.no_progress
        )
    for entry in manifest["skipped"]:
        print(skip_line(entry), file=sys.stderr)
    n_skipped = len(manifest["skipped"])
    note = f"; skipped {n_skipped} damaged case(s), listed there" if n_skipped else ""
    n_cases = len(manifest["cases"])
    print(f"exported {n_cases} cases to {args.out} (manifest.json lists files and hashes){note}")
    return 1 if n_skipped else 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from workbench.demo import build_demo

    ws = Workspace.open(args.workspace)
    for line in build_demo(ws, cases_per_source=args.cases, progress=not args.no_progress):
        print(line)
    if args.round:
        from workbench.demo import run_demo_round

        lines = run_demo_round(ws, review_budget=args.budget, steps=args.steps, progress=not args.no_progress)
        for line in lines:
            print(line)
    return 0


def _cmd_round(args: argparse.Namespace) -> int:
    from workbench.learning.rounds import run_round, tiny_config

    ws = Workspace.open(args.workspace)
    reviewer = None
    truth = None
    if args.simulated_expert:
        from workbench.demo import demo_truth_specs
        from workbench.learning.simulated_expert import PhantomTruth, SimulatedExpert

        provider = PhantomTruth(ws, demo_truth_specs(ws))
        reviewer = SimulatedExpert(ws, provider, budget=args.budget, image=provider.image)
        truth = provider.scan_truth
    result = run_round(
        ws,
        vocabulary=args.vocabulary,
        config=tiny_config(steps=args.steps, seed=args.seed),
        review_budget=args.budget if reviewer is not None else 0,
        reviewer=reviewer,
        previous_checkpoint=args.previous,
        from_scratch=args.from_scratch,
        truth=truth,
        progress=not args.no_progress,
    )
    for line in result.lines():
        print(line)
    return 0


def _cmd_pseudolabel(args: argparse.Namespace) -> int:
    ws = Workspace.open(args.workspace)
    common = {
        "scans": args.scan,
        "sources": args.source,
        "all_classes": args.all_classes,
        "low_res_mm": None if args.native else args.low_res_mm,
        "overlap": args.overlap,
        "progress": not args.no_progress,
    }
    if args.ray is not None:
        from workbench.pseudolabel import pseudolabel_ray

        summary = pseudolabel_ray(
            ws, args.checkpoint, address=args.ray or None, workers=args.workers, device=args.device, **common
        )
    else:
        from workbench.pseudolabel import pseudolabel

        summary = pseudolabel(ws, args.checkpoint, device=args.device, **common)
    for line in summary.lines():
        print(line)
    return 1 if summary.failed else 0


def _cmd_queue(args: argparse.Namespace) -> int:
    from workbench.review import format_queue, rank

    ws = Workspace.open(args.workspace)
    df = rank(ws, args.run, long_tail_boost=args.long_tail_boost, limit=args.top)
    for line in format_queue(df, args.top):
        print(line)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from workbench.learning.evaluation import evaluate

    ws = Workspace.open(args.workspace)
    result = evaluate(
        ws,
        args.run,
        tolerance_mm=args.tolerance_mm,
        fraction=args.fraction,
        seed=args.seed,
        min_tumour_voxels=args.min_tumour_voxels,
        progress=not args.no_progress,
    )
    for line in result.lines():
        print(line)
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from workbench.learning.vocabularies import embed, import_release_vocabulary

    ws = Workspace.open(args.workspace)
    if args.import_release:
        name, vocab = import_release_vocabulary(
            ws, args.import_release, name=args.name or "universal-model-release"
        )
    else:
        name, vocab = embed(
            ws,
            encoder=args.encoder,
            template=args.template,
            name=args.name,
            clip_weights=args.clip_weights,
            classes=args.classes,
        )
    print(
        f"stored text vocabulary {name!r}: {vocab.n_classes} classes, encoder {vocab.encoder_id}, "
        f"template {vocab.template_id}, sha256 {vocab.sha256[:12]}"
    )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from workbench.learning.catalog_training import train_from_catalog
    from workbench.model.train import TrainConfig
    from workbench.model.transforms import PipelineConfig

    ws = Workspace.open(args.workspace)
    config = TrainConfig(
        backbone=args.backbone,
        pipeline=PipelineConfig(spacing_mm=(args.spacing,) * 3, patch=(args.patch,) * 3),
        lr=args.lr,
        epochs=args.epochs,
        max_steps=args.max_steps,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        grad_clip=args.grad_clip,
        lr_schedule=args.lr_schedule,
    )
    out = args.out or str(ws.models / "latest")
    run_id, result = train_from_catalog(
        ws,
        out,
        vocabulary=args.vocabulary,
        config=config,
        sources=args.source,
        resume=not args.fresh,
        progress=not args.no_progress,
    )
    print(f"run {run_id}: {result.step} steps, {result.epoch} epochs; checkpoint {result.checkpoint}")
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
    p.add_argument(
        "--hash-case-ids",
        action="store_true",
        help="store a SHA-256 prefix of each case folder name instead of the name (names that may "
        "identify a patient)",
    )
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="harmonize cases in N worker processes; this process alone writes the catalog (default 1)",
    )
    p.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run the workers on a Ray cluster ('auto', 'ray://host:10001', or 'local'); dataset and "
        "workspace must be at the same paths on every node",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="cases per catalog transaction (default 1 in one process, 16 with workers)",
    )
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser("stats", help="per-class long-tail table")
    p.add_argument("--by-source", action="store_true", help="one row per class x source")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.set_defaults(func=_cmd_stats)

    p = sub.add_parser(
        "gc", help="remove mask files no committed label set references (killed writers' leftovers)"
    )
    p.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    p.add_argument(
        "--min-age-s",
        type=float,
        default=ORPHAN_MIN_AGE_S,
        help="leave younger files alone: their writer may be about to commit them (default %(default)s)",
    )
    p.set_defaults(func=_cmd_gc)

    p = sub.add_parser(
        "backup", help="a consistent copy of the catalog, mask files and uncertainty maps (others may work)"
    )
    p.add_argument("out", help="the backup folder to create (must not exist)")
    p.add_argument(
        "--link",
        action="store_true",
        help="hard-link mask files and maps (same filesystem) instead of copying: fast, but damage done to a "
        "file in place reaches the backup too",
    )
    p.set_defaults(func=_cmd_backup)

    p = sub.add_parser("restore", help="restore a backup (manifest verified first) into a workspace folder")
    p.add_argument("backup", help="a folder written by `workbench backup`")
    p.add_argument("target", nargs="?", help="the workspace folder (default: --workspace)")
    p.add_argument(
        "--force", action="store_true", help="move an occupied target aside (never deleted) and restore"
    )
    p.add_argument("--link", action="store_true", help="hard-link mask files and maps from the backup")
    p.set_defaults(func=_cmd_restore)

    p = sub.add_parser(
        "check", help="catalog vs mask store: missing, damaged or mismatched mask files, orphans (exit 1)"
    )
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p.add_argument("--quick", action="store_true", help="read the mask files' indexes only, decode nothing")
    p.add_argument(
        "--repair-from",
        metavar="BACKUP",
        help="put back missing or damaged mask files from this backup (nothing else changes), check again",
    )
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("export", help="export harmonized labels")
    p.add_argument("format", choices=("abdomenatlas", "nnunet", "monai"))
    p.add_argument("out", help="output folder")
    p.add_argument("--source", action="append", help="only this source (repeatable)")
    p.add_argument("--class", dest="classes", action="append", help="only this class (repeatable)")
    p.add_argument(
        "--origin",
        action="append",
        choices=("revised", "original", "pseudo"),
        help="nnunet/monai: label origins that may contribute (repeatable; default all, priority "
        "revised > original > pseudo)",
    )
    p.add_argument("--folds", type=int, default=5, help="monai: cross-validation folds")
    p.add_argument("--seed", type=int, default=0, help="monai: fold assignment seed")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("demo", help="build the demo workspace from synthetic phantoms")
    p.add_argument("--cases", type=int, default=3, help="phantom cases per source")
    p.add_argument(
        "--round",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train a tiny model, pseudo-label, rank the queue and run one round with the simulated expert",
    )
    p.add_argument("--budget", type=int, default=20, help="items the simulated expert reviews in the round")
    p.add_argument("--steps", type=int, default=400, help="training steps of the first model")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("round", help="one active-learning round: review, fine-tune, evaluate, pseudo-label")
    p.add_argument("--vocabulary", required=True, help="stored vocabulary name (see `workbench embed`)")
    p.add_argument("--steps", type=int, default=8, help="training steps of this round (tiny CPU config)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--previous", help="start from this checkpoint (default: the latest round's)")
    p.add_argument("--from-scratch", action="store_true", help="start from fresh weights")
    p.add_argument(
        "--simulated-expert",
        action="store_true",
        help="demo workspaces: the simulated expert reviews --budget queued items with the phantoms' truth",
    )
    p.add_argument("--budget", type=int, default=20, help="items the simulated expert reviews")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_round)

    p = sub.add_parser("pseudolabel", help="fill the classes scans lack with a model's predictions")
    p.add_argument("checkpoint", help="a checkpoint written by the workbench's training")
    p.add_argument("--scan", action="append", help="only this scan id (repeatable)")
    p.add_argument("--source", action="append", help="only scans of this source (repeatable)")
    p.add_argument("--all-classes", action="store_true", help="predict annotated classes too")
    p.add_argument("--low-res-mm", type=float, default=3.0, help="inference spacing, mm (default 3)")
    p.add_argument("--native", action="store_true", help="infer at the checkpoint's own spacing")
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (default 0.5)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="run on Ray: a local instance, or the cluster at ADDRESS",
    )
    p.add_argument("--workers", type=int, default=None, help="Ray: actors (default: one per GPU, else 2)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_pseudolabel)

    p = sub.add_parser("queue", help="the review queue: uncertain or implausible pseudo-labels first")
    p.add_argument("--top", type=int, default=20, help="items to print")
    p.add_argument("--run", help="only items of this pseudo-label run")
    p.add_argument("--long-tail-boost", type=float, default=0.5, help="boost for rare classes (0: none)")
    p.set_defaults(func=_cmd_queue)

    p = sub.add_parser(
        "evaluate", help="Dice, NSD and tumour detection of a pseudo-label run on the held-out split"
    )
    p.add_argument(
        "run", help="a pseudo-label run id (it must predict annotated classes too: pseudolabel --all-classes)"
    )
    p.add_argument("--tolerance-mm", type=float, default=2.0, help="NSD boundary tolerance in mm (default 2)")
    p.add_argument(
        "--fraction", type=float, default=0.2, help="held-out share, used only when the split is first chosen"
    )
    p.add_argument("--seed", type=int, default=0, help="split seed, used only when the split is first chosen")
    p.add_argument(
        "--min-tumour-voxels", type=int, default=1, help="predicted voxels that count as a detected tumour"
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_evaluate)
    p = sub.add_parser("embed", help="embed the class names with a text encoder; store the vocabulary")
    p.add_argument(
        "--encoder",
        choices=("minilm", "clip"),
        default="minilm",
        help="minilm: offline stand-in shipped with its weights (not CLIP); clip: open_clip ViT-B-32",
    )
    p.add_argument(
        "--clip-weights", help="local open_clip checkpoint file, or a pretrained tag (default openai)"
    )
    p.add_argument("--template", choices=("V1", "V2", "V3", "V4"), default="V1")
    p.add_argument("--name", help="vocabulary name (default <encoder>-<template>)")
    p.add_argument(
        "--class",
        dest="classes",
        action="append",
        metavar="CLASS",
        help="embed only these classes, in this order (repeatable; default all 32)",
    )
    p.add_argument(
        "--import-release",
        metavar="TXT_ENCODING_PTH",
        help="import the original release's txt_encoding.pth instead of encoding",
    )
    p.set_defaults(func=_cmd_embed)

    p = sub.add_parser("train", help="train the Universal Model on the catalog (partial labels respected)")
    p.add_argument("--vocabulary", required=True, help="stored vocabulary name (see `workbench embed`)")
    p.add_argument("--out", help="checkpoint folder (default <workspace>/models/latest)")
    p.add_argument("--backbone", choices=("small_unet", "unet3d", "swinunetr"), default="small_unet")
    p.add_argument("--spacing", type=float, default=3.0, help="isotropic spacing in mm (paper: 1.5)")
    p.add_argument("--patch", type=int, default=64, help="cubic patch size in voxels (paper: 96)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument(
        "--lr-schedule",
        choices=("constant", "cosine"),
        default="constant",
        help="constant (the paper) or a cosine decay to 5%% of --lr over the run",
    )
    p.add_argument("--grad-clip", type=float, help="clip the gradient norm (needed for high --lr)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--source", action="append", help="train on this source only (repeatable)")
    p.add_argument("--fresh", action="store_true", help="do not resume from the checkpoint folder")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``workbench`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except Exception as e:
        # Bad input and our own errors get one line; anything else is a bug and keeps its traceback.
        ours = type(e).__module__.split(".")[0] in ("harmonize", "storage", "workbench")
        if not (ours or isinstance(e, (HarmonizeError, KeyError, ValueError, CatalogBusy, CatalogError))):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"workbench: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
