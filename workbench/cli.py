"""The ``workbench`` command line. Thin: every command calls a function that tests call too.

    workbench [--workspace DIR] sources
    workbench [--workspace DIR] ingest SOURCE ROOT
    workbench [--workspace DIR] stats [--by-source] [--format table|csv|json]
    workbench [--workspace DIR] gc [--dry-run] [--min-age-s S]
    workbench [--workspace DIR] backup OUT [--link]
    workbench [--workspace DIR] restore BACKUP [WORKSPACE] [--force] [--link]
    workbench [--workspace DIR] check [--json] [--quick] [--repair-from BACKUP]
    workbench [--workspace DIR] export abdomenatlas|nnunet|monai OUT [--source ID ...] [--class NAME ...]
                                [--pseudo accepted|all|none] [--include-held-out]
                                [--ignore-margin-mm MM] [--folds K] [--seed N]
    workbench [--workspace DIR] demo [--cases N] [--no-round] [--budget N]
    workbench [--workspace DIR] round [--vocabulary NAME] [--steps N] [--previous NAME|FILE]
                                [--spacing MM] [--patch N] [--from-scratch] [--simulated-expert --budget N]
    workbench [--workspace DIR] import-model FILE [--name NAME] [--backbone unet|swinunetr]
    workbench [--workspace DIR] pseudolabel NAME|FILE [--scan ID ...] [--source ID ...] [--all-classes]
                                [--low-res-mm MM | --native] [--overlap F] [--device auto|cpu|cuda]
                                [--tta] [--sw-batch-size N] [--classes C ...] [--backbone unet|swinunetr]
                                [--ray [ADDRESS]] [--workers N]
    workbench [--workspace DIR] queue [--top N] [--run RUN_ID] [--long-tail-boost B]
    workbench [--workspace DIR] review list [--reviewer NAME] [--adjudication] [--status S] [--class NAME ...]
                                [--source ID ...] [--reason R ...] [--top N] [--format table|csv|json]
    workbench [--workspace DIR] review accept|reject SCAN CLASS --reviewer NAME [--comment TEXT]
                                [--label-set ID]
    workbench [--workspace DIR] review edit SCAN CLASS OUT_DIR [--reviewer NAME]
    workbench [--workspace DIR] review import SCAN CLASS FILE --reviewer NAME [--comment TEXT]
                                [--label-set ID]
    workbench [--workspace DIR] review undo REVIEW_ID --reviewer NAME [--comment TEXT]
    workbench [--workspace DIR] review agreement [--format table|csv|json]
    workbench [--workspace DIR] review share [SHARE]
    workbench [--workspace DIR] evaluate RUN_ID [--tolerance-mm MM] [--fraction F] [--seed N]
                                [--min-tumour-voxels N] [--tumour-free]
    workbench [--workspace DIR] evaluate MODEL --external SOURCE ... [--tolerance-mm MM]
                                [--low-res-mm MM] [--device auto|cpu|cuda] [--sw-batch-size N]
    workbench [--workspace DIR] report MODEL OUT.html [--against MODEL ...]
    workbench [--workspace DIR] embed [--encoder minilm|clip] [--clip-weights FILE|TAG] [--template V1..V4]
                                [--name NAME] [--import-release TXT_ENCODING_PTH]
    workbench [--workspace DIR] train --vocabulary NAME [--backbone B] [--spacing MM] [--patch N]
                                [--epochs N] [--max-steps N] [--source ID ...] [--fresh]
                                [--include-held-out] [--name NAME]
    workbench [--workspace DIR] train --init MODEL [--class C ...] [--source ID ...] [--name NAME]
                                [--add-class NAME [--prompt TEXT] [--kind K] [--parent C]]
                                [--freeze none|backbone|old_classes] [--spacing MM] [--patch N] ...

The workspace is ``--workspace``, else ``$WORKBENCH_HOME``, else ``./workspace``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

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
    from workbench.export.summary import export_lines

    ws = Workspace.open(args.workspace)
    common: dict[str, Any] = {
        "sources": args.source,
        "classes": args.classes,
        "pseudo": args.pseudo,
        "include_held_out": args.include_held_out,
        "progress": not args.no_progress,
    }
    if args.format == "nnunet":
        manifest = export_nnunet(ws, args.out, ignore_margin_mm=args.ignore_margin_mm, **common)
    elif args.format == "monai":
        manifest = export_monai(
            ws, args.out, ignore_margin_mm=args.ignore_margin_mm, n_folds=args.folds, seed=args.seed, **common
        )
    else:
        manifest = export_abdomenatlas(ws, args.out, **common)
    for entry in manifest["skipped"]:
        print(skip_line(entry), file=sys.stderr)
    for line in export_lines(manifest):
        print(line)
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
    config = tiny_config(steps=args.steps, seed=args.seed)
    result = run_round(
        ws,
        vocabulary=args.vocabulary,
        config=config,
        review_budget=args.budget if reviewer is not None else 0,
        reviewer=reviewer,
        previous_checkpoint=_previous_model(ws, args.previous),
        from_scratch=args.from_scratch,
        truth=truth,
        progress=not args.no_progress,
        pipeline=_pipeline(config.pipeline, args.spacing, args.patch),
    )
    for line in result.lines():
        print(line)
    return 0


def _pipeline(base: Any, spacing: float | None, patch: int | None) -> Any:
    """``--spacing`` / ``--patch`` over a pipeline; None when neither was given (the model's own)."""
    if spacing is None and patch is None:
        return None
    import dataclasses

    changes: dict[str, Any] = {}
    if spacing is not None:
        changes["spacing_mm"] = (spacing,) * 3
    if patch is not None:
        changes["patch"] = (patch,) * 3
    return dataclasses.replace(base, **changes)


def _cmd_pseudolabel(args: argparse.Namespace) -> int:
    from workbench.pseudolabel.run import MODEL_DEFAULT

    ws = Workspace.open(args.workspace)
    low_res: float | str | None = MODEL_DEFAULT if args.low_res_mm is None else args.low_res_mm
    common = {
        "scans": args.scan,
        "sources": args.source,
        "all_classes": args.all_classes,
        "low_res_mm": None if args.native else low_res,
        "overlap": args.overlap,
        "tta": True if args.tta else None,
        "sw_batch_size": args.sw_batch_size,
        "classes": args.classes,
        "backbone": args.backbone,
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


def _cmd_import_model(args: argparse.Namespace) -> int:
    from workbench.model.registry import import_model

    ws = Workspace.open(args.workspace)
    embeddings = None
    if args.embeddings:
        from workbench.model.text import import_original_vocabulary

        embeddings = import_original_vocabulary(args.embeddings).embeddings
    result = import_model(
        ws,
        args.file,
        name=args.name,
        backbone=args.backbone,
        embeddings=embeddings,
        embeddings_path=args.embeddings,
    )
    print(result.line())
    return 0


def _previous_model(ws: Workspace, ref: str | None) -> str | None:
    """``round --previous``: a registered model's name (a release or a workbench checkpoint) -> its
    file; a file as given."""
    if ref is None:
        return None
    row = ws.catalog.model(ref)
    if row is None:
        return ref
    from workbench.model.registry import registered_path

    return str(registered_path(ws, row))


def _cmd_queue(args: argparse.Namespace) -> int:
    from workbench import review

    ws = Workspace.open(args.workspace)
    if args.reviewer:
        review.validate_reviewer(ws, args.reviewer)
    df = review.rank(
        ws,
        args.run,
        long_tail_boost=args.long_tail_boost,
        limit=args.top,
        include_unlearnt=args.include_unlearnt,
        reader=args.reviewer,
    )
    for line in [
        *review.learnt_notice(ws, include_unlearnt=args.include_unlearnt),
        *review.format_queue(df, args.top),
    ]:
        print(line)
    return 0


#: Columns ``workbench review list`` prints (``note``: why an item is back, ``requeue.requeue_note``).
REVIEW_LIST_COLUMNS = ["score", "scan_id", "class_name", "label_set_id", "status", "readings", "note"]
#: Columns ``workbench review list --adjudication`` prints: both readings, for the adjudicator.
ADJUDICATION_COLUMNS = [
    "scan_id",
    "class_name",
    "label_set_id",
    "reader_a",
    "decision_a",
    "reader_b",
    "decision_b",
    "reading_dice",
]


def _cmd_review_list(args: argparse.Namespace) -> int:
    from workbench import review

    ws = _existing_workspace(args.workspace)
    if args.reviewer:
        review.validate_reviewer(ws, args.reviewer)
    if args.adjudication:
        _print_table(review.adjudication_list(ws)[ADJUDICATION_COLUMNS].head(args.top), args.format)
        return 0
    q = review.queue(
        ws,
        classes=args.classes,
        sources=args.sources,
        reasons=args.reasons,
        status=args.status,
        reader=args.reviewer,
        limit=args.top,
        include_unlearnt=args.include_unlearnt,
    )
    for line in review.learnt_notice(ws, include_unlearnt=args.include_unlearnt):
        print(line, file=sys.stderr if args.format != "table" else sys.stdout)
    q["note"] = [review.requeue_note(r) or "" for r in q.to_dict("records")]
    _print_table(q[REVIEW_LIST_COLUMNS], args.format)
    return 0


def _cmd_review_decide(args: argparse.Namespace) -> int:
    from workbench import review

    ws = _existing_workspace(args.workspace)
    name = review.validate_reviewer(ws, args.reviewer)
    ls = args.label_set or review.item_label_set(ws, args.scan, args.class_name)
    on_list = review.adjudication_list(ws)
    disputed = not on_list[(on_list["label_set_id"] == ls) & (on_list["class_name"] == args.class_name)].empty
    record = review.adjudicate if disputed else review.record_decision
    rid = record(ws, args.scan, args.class_name, ls, args.decision, name, args.comment)
    what = "adjudicated" if disputed else "recorded"
    print(f"{what} {args.decision} of {args.class_name} on {args.scan} ({ls}) by {name}: {rid}")
    return 0


def _cmd_review_edit(args: argparse.Namespace) -> int:
    from harmonize.taxonomy import class_by_name
    from workbench import review
    from workbench.review.validation import check_class

    ws = _existing_workspace(args.workspace)
    if args.reviewer:
        review.validate_reviewer(ws, args.reviewer)
    cls = check_class(ws, args.class_name)
    files = review.export_case_for_slicer(ws, args.scan, args.out_dir)
    for path in files.values():
        print(path)
    print(
        f"edit {cls} (label value {class_by_name(cls).index}) in labels.nii.gz, then: "
        f"workbench review import {args.scan} {cls} {files['labels.nii.gz']} --reviewer NAME"
    )
    return 0


def _cmd_review_import(args: argparse.Namespace) -> int:
    from workbench import review

    ws = _existing_workspace(args.workspace)
    name = review.validate_reviewer(ws, args.reviewer)
    corr = review.import_correction(
        ws, args.scan, args.class_name, args.file, name, args.comment, base_label_set_id=args.label_set
    )
    print(f"imported {args.class_name} of {args.scan} as {corr.label_set_id} by {name}: {corr.review_id}")
    return 0


def _cmd_review_undo(args: argparse.Namespace) -> int:
    from workbench import review

    ws = _existing_workspace(args.workspace)
    name = review.validate_reviewer(ws, args.reviewer)
    rid = review.undo(ws, args.review_id, name, args.comment)
    print(f"undid {args.review_id} by {name}: {rid}")
    return 0


def _cmd_review_agreement(args: argparse.Namespace) -> int:
    from workbench import review

    ws = _existing_workspace(args.workspace)
    table = review.agreement(ws)
    print(review.agreement_line(ws))
    if not table.empty:
        _print_table(table, args.format)
    return 0


def _cmd_review_share(args: argparse.Namespace) -> int:
    from workbench.review import double_reading

    ws = _existing_workspace(args.workspace)
    if args.share is not None:
        planned = double_reading.set_share(ws, args.share)
        print(f"double-read share set to {args.share:.0%}; {planned} newly planned items are double-read")
    else:
        print(f"double-read share {double_reading.share(ws):.0%}")
    return 0


def _add_review_parser(sub: argparse._SubParsersAction) -> None:
    """``workbench review ...``: the queue and decisions for reviewers outside the app."""
    from workbench.review import QUEUE_STATUSES

    group = sub.add_parser("review", help="review outside the app: list, accept, reject, edit, import, undo")
    rsub = group.add_subparsers(dest="review_command", required=True)
    p = rsub.add_parser("list", help="the review queue (with --reviewer: that reviewer's blind queue)")
    p.add_argument("--reviewer", help="list this reviewer's blind queue (double-read items not yet read)")
    p.add_argument("--adjudication", action="store_true", help="double-read items whose readers disagree")
    p.add_argument("--status", default="pending", choices=QUEUE_STATUSES)
    p.add_argument("--class", dest="classes", action="append", help="only this class (repeatable)")
    p.add_argument("--source", dest="sources", action="append", help="only this source (repeatable)")
    p.add_argument("--reason", dest="reasons", action="append", help="only items with this reason")
    p.add_argument("--top", type=int, default=50, help="at most this many rows")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument(
        "--include-unlearnt", action="store_true", help="also list items of classes the model never learnt"
    )
    p.set_defaults(func=_cmd_review_list)
    for decision in ("accept", "reject"):
        p = rsub.add_parser(decision, help=f"{decision} the label of SCAN CLASS (its newest queue item)")
        p.add_argument("scan")
        p.add_argument("class_name", metavar="CLASS")
        p.add_argument("--reviewer", required=True)
        p.add_argument("--comment", default="")
        p.add_argument("--label-set", help="the label set judged (default: the newest queue item's)")
        p.set_defaults(func=_cmd_review_decide, decision=decision)
    p = rsub.add_parser("edit", help="write CT + current labels + colour tables for 3D Slicer / ITK-SNAP")
    p.add_argument("scan")
    p.add_argument("class_name", metavar="CLASS")
    p.add_argument("out_dir")
    p.add_argument("--reviewer")
    p.set_defaults(func=_cmd_review_edit)
    p = rsub.add_parser("import", help="import an edited label NIfTI for SCAN CLASS as a correction")
    p.add_argument("scan")
    p.add_argument("class_name", metavar="CLASS")
    p.add_argument("file")
    p.add_argument("--reviewer", required=True)
    p.add_argument("--comment", default="")
    p.add_argument("--label-set", help="the label set corrected (default: the current one)")
    p.set_defaults(func=_cmd_review_import)
    p = rsub.add_parser("undo", help="undo one decision or correction")
    p.add_argument("review_id")
    p.add_argument("--reviewer", required=True)
    p.add_argument("--comment", default="")
    p.set_defaults(func=_cmd_review_undo)
    p = rsub.add_parser("agreement", help="inter-reviewer agreement per class (double reading)")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.set_defaults(func=_cmd_review_agreement)
    p = rsub.add_parser("share", help="show or set the share of items read by two reviewers")
    p.add_argument("share", nargs="?", type=float)
    p.set_defaults(func=_cmd_review_share)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    if args.external:
        from workbench.learning.external import evaluate_external
        from workbench.pseudolabel.run import MODEL_DEFAULT

        result = evaluate_external(
            Workspace.open(args.workspace),
            args.run,
            args.external,
            tolerance_mm=args.tolerance_mm,
            min_tumour_voxels=args.min_tumour_voxels,
            low_res_mm=MODEL_DEFAULT if args.low_res_mm is None else args.low_res_mm,
            device=args.device,
            sw_batch_size=args.sw_batch_size,
            progress=not args.no_progress,
        )
    else:
        from workbench.learning.evaluation import evaluate

        result = evaluate(
            Workspace.open(args.workspace),
            args.run,
            tolerance_mm=args.tolerance_mm,
            fraction=args.fraction,
            seed=args.seed,
            min_tumour_voxels=args.min_tumour_voxels,
            progress=not args.no_progress,
            tumour_free=args.tumour_free,
        )
    for line in result.lines():
        print(line)
    for scan, problem in result.facts.get("failed_scans", []):
        print(f"  failed {scan}: {problem}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from workbench.learning.report import collect, save_report

    data = collect(Workspace.open(args.workspace), args.model, args.against or ())
    for line in data.lines(save_report(data, args.out)):
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
    from workbench.model.train import TrainConfig

    ws = Workspace.open(args.workspace)
    if args.init is not None:
        return _cmd_fine_tune(args, ws)
    if args.add_class or args.classes or args.freeze != "none":
        raise ValueError("--add-class, --classes and --freeze fine-tune a model: give it with --init MODEL")
    if args.vocabulary is None:
        raise ValueError("train needs --vocabulary NAME (or --init MODEL, which brings its own)")
    from workbench.learning.catalog_training import train_from_catalog
    from workbench.model.transforms import PipelineConfig

    spacing = 3.0 if args.spacing is None else args.spacing
    patch = 64 if args.patch is None else args.patch
    config = TrainConfig(
        backbone=args.backbone or "small_unet",
        pipeline=PipelineConfig(spacing_mm=(spacing,) * 3, patch=(patch,) * 3),
        **_schedule(args),
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
        include_held_out=args.include_held_out,
    )
    print(f"run {run_id}: {result.step} steps, {result.epoch} epochs; checkpoint {result.checkpoint}")
    if args.name:
        from workbench.model.registry import import_model

        print(import_model(ws, str(result.checkpoint), name=args.name).line())
    return 0


def _schedule(args: argparse.Namespace) -> dict[str, Any]:
    """The ``TrainConfig`` settings ``train`` takes from its flags, with or without ``--init``."""
    return {
        "lr": args.lr,
        "epochs": args.epochs,
        "max_steps": args.max_steps,
        "checkpoint_every": args.checkpoint_every,
        "seed": args.seed,
        "grad_clip": args.grad_clip,
        "lr_schedule": args.lr_schedule,
    }


def _new_classes(args: argparse.Namespace) -> list[Any]:
    """``--add-class NAME`` (repeatable) with its ``--prompt`` / ``--kind`` / ``--parent`` by position."""
    from workbench.learning.fine_tuning import NewClass

    names = list(args.add_class or [])
    for flag in ("prompt", "kind", "parent"):
        if len(getattr(args, flag) or []) > len(names):
            raise ValueError(f"--{flag} given more often than --add-class ({len(names)})")
    return [
        NewClass(
            name,
            prompt=_nth(args.prompt, i),
            kind=_nth(args.kind, i) or "organ",
            parent=_nth(args.parent, i),
        )
        for i, name in enumerate(names)
    ]


def _nth(values: Sequence[str] | None, i: int) -> str | None:
    """The i-th value of a repeatable flag, None past its end."""
    return values[i] if values is not None and i < len(values) else None


def _cmd_fine_tune(args: argparse.Namespace, ws: Workspace) -> int:
    from workbench.learning.fine_tuning import fine_tune
    from workbench.model.train import TrainConfig

    if args.vocabulary is not None or args.backbone is not None:
        raise ValueError(
            "--init keeps the model's own vocabulary and backbone; leave out --vocabulary and --backbone"
        )
    result = fine_tune(
        ws,
        args.init,
        config=TrainConfig(freeze=args.freeze, **_schedule(args)),
        spacing_mm=args.spacing,
        patch=args.patch,
        out_dir=args.out,
        sources=args.source,
        classes=args.classes,
        new_classes=_new_classes(args),
        name=args.name,
        include_held_out=args.include_held_out,
        resume=not args.fresh,
        progress=not args.no_progress,
        backbone=args.release_backbone,
        clip_weights=args.clip_weights,
    )
    for line in result.lines():
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

    from workbench.training_set import PSEUDO_POLICIES

    p = sub.add_parser("export", help="export harmonized labels")
    p.add_argument("format", choices=("abdomenatlas", "nnunet", "monai"))
    p.add_argument("out", help="output folder")
    p.add_argument("--source", action="append", help="only this source (repeatable)")
    p.add_argument("--class", dest="classes", action="append", help="only this class (repeatable)")
    p.add_argument(
        "--pseudo",
        choices=tuple(PSEUDO_POLICIES),
        default="accepted",
        help="pseudo-labels that fill partial labels: accepted (reviewed and accepted; default), all (every "
        "one not rejected) or none; priority revised > original > accepted > pseudo, rejected never",
    )
    p.add_argument(
        "--include-held-out",
        action="store_true",
        help="keep the held-out scans (default: left out, exports are for training)",
    )
    p.add_argument(
        "--ignore-margin-mm",
        type=float,
        default=10.0,
        help="nnunet/monai: ignore voxels within this margin (mm) of an unknown class's pseudo-label "
        "(default 10); an unknown class without one is ignored inside the body",
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
    p.add_argument("--steps", type=int, default=250, help="training steps of the first model")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("round", help="one active-learning round: review, fine-tune, evaluate, pseudo-label")
    p.add_argument(
        "--vocabulary",
        help="stored vocabulary name (see `workbench embed`); a previous model brings its own (default)",
    )
    p.add_argument("--steps", type=int, default=8, help="training steps of this round (tiny CPU config)")
    p.add_argument(
        "--spacing", type=float, help="training spacing in mm (default: the previous model's, else 6)"
    )
    p.add_argument("--patch", type=int, help="cubic patch side (default: the previous model's, else 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--previous",
        help="start from this model: a registered name (release or workbench), a release file or a "
        "checkpoint, any backbone (default: the latest round's)",
    )
    p.add_argument("--from-scratch", action="store_true", help="start from fresh weights")
    p.add_argument(
        "--simulated-expert",
        action="store_true",
        help="demo workspaces: the simulated expert reviews --budget queued items with the phantoms' truth",
    )
    p.add_argument("--budget", type=int, default=20, help="items the simulated expert reviews")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_round)

    p = sub.add_parser(
        "import-model", help="register a model file (a release .pth or a workbench checkpoint) by name"
    )
    p.add_argument("file", help="the model file")
    p.add_argument("--name", help="the name later commands use (default <kind>-<backbone>-<sha256[:8]>)")
    p.add_argument("--backbone", choices=("unet", "swinunetr"), help="only where the keys are ambiguous")
    p.add_argument("--embeddings", help="the released txt_encoding.pth: checked to be the model's own")
    p.set_defaults(func=_cmd_import_model)

    p = sub.add_parser("pseudolabel", help="fill the classes scans lack with a model's predictions")
    p.add_argument(
        "checkpoint",
        help="a registered model's name, a workbench checkpoint, or an original release file",
    )
    p.add_argument("--backbone", choices=("unet", "swinunetr"), help="release files with ambiguous keys")
    p.add_argument("--scan", action="append", help="only this scan id (repeatable)")
    p.add_argument("--source", action="append", help="only scans of this source (repeatable)")
    p.add_argument("--all-classes", action="store_true", help="predict annotated classes too")
    p.add_argument(
        "--low-res-mm",
        type=float,
        default=None,
        help="inference spacing, mm (default: a release model's 1.5, a workbench checkpoint 3)",
    )
    p.add_argument("--native", action="store_true", help="infer at the checkpoint's own spacing")
    p.add_argument("--overlap", type=float, default=None, help="sliding-window overlap (default 0.5)")
    p.add_argument(
        "--tta", action="store_true", help="test-time augmentation for every model (doubles device time)"
    )
    p.add_argument("--sw-batch-size", type=int, default=1, help="sliding windows per forward (GPU: 4-8)")
    p.add_argument("--classes", nargs="+", metavar="CLASS", help="predict only these classes")
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
    p.add_argument("--reviewer", help="this reviewer's blind queue (items not yet read by them)")
    p.add_argument(
        "--include-unlearnt", action="store_true", help="also rank items of classes the model never learnt"
    )
    p.set_defaults(func=_cmd_queue)

    _add_review_parser(sub)

    p = sub.add_parser(
        "evaluate",
        help="Dice, NSD and tumour detection of a pseudo-label run on the held-out split, or of a model on "
        "external sources (--external)",
    )
    p.add_argument(
        "run",
        help="a pseudo-label run id (it must predict annotated classes too: pseudolabel --all-classes); "
        "with --external: a registered model's name or a model file",
    )
    p.add_argument(
        "--external",
        nargs="+",
        metavar="SOURCE",
        help="run the model on every scan of these sources; refused for a source its training record holds",
    )
    p.add_argument("--tolerance-mm", type=float, default=2.0, help="NSD boundary tolerance in mm (default 2)")
    p.add_argument(
        "--fraction", type=float, default=0.2, help="held-out share, used only when the split is first chosen"
    )
    p.add_argument("--seed", type=int, default=0, help="split seed, used only when the split is first chosen")
    p.add_argument(
        "--min-tumour-voxels", type=int, default=1, help="predicted voxels that count as a detected tumour"
    )
    p.add_argument(
        "--tumour-free",
        action="store_true",
        help="held-out: count patients of tumour-free sources (CHAOS, Pancreas-CT) for the specificity "
        "(always on with --external)",
    )
    p.add_argument(
        "--low-res-mm", type=float, default=None, help="--external: inference spacing (default the model's)"
    )
    p.add_argument("--device", default="auto", help="--external: auto (CUDA when present), cpu, cuda, ...")
    p.add_argument("--sw-batch-size", type=int, default=1, help="--external: sliding windows per forward")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_evaluate)
    p = sub.add_parser(
        "report", help="one self-contained HTML report: the paper's tables recomputed from the evaluations"
    )
    p.add_argument("model", help="a registered model's name (or sha256), or a model file")
    p.add_argument("out", help="the HTML file to write")
    p.add_argument("--against", action="append", metavar="MODEL", help="a model to compare with (repeatable)")
    p.set_defaults(func=_cmd_report)
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
    p.add_argument("--vocabulary", help="stored vocabulary name (see `workbench embed`); not with --init")
    p.add_argument(
        "--init",
        metavar="MODEL",
        help="fine-tune this model (a registered name, a release file or a workbench checkpoint): its "
        "backbone, controller, heads and vocabulary are kept; the result is registered",
    )
    p.add_argument("--out", help="checkpoint folder (default models/latest; with --init models/ft-<init>)")
    p.add_argument(
        "--backbone", choices=("small_unet", "unet3d", "swinunetr"), help="fresh model (default small_unet)"
    )
    p.add_argument(
        "--spacing", type=float, help="isotropic spacing in mm (default 3; with --init the model's own)"
    )
    p.add_argument(
        "--patch", type=int, help="cubic patch side in voxels (default 64; with --init the model's)"
    )
    p.add_argument("--name", help="register the checkpoint under this name (with --init: <init>-ft-<sha8>)")
    p.add_argument(
        "--class",
        dest="classes",
        action="append",
        metavar="CLASS",
        help="with --init: train only this class (repeatable; default every class of the model)",
    )
    p.add_argument(
        "--add-class",
        action="append",
        metavar="NAME",
        help="with --init: a head for a class the model lacks, registered in the catalog (repeatable)",
    )
    p.add_argument(
        "--prompt",
        action="append",
        metavar="TEXT",
        help="the name the new class's text prompt uses, e.g. 'Renal Vein' (one per --add-class, in order)",
    )
    p.add_argument(
        "--kind",
        action="append",
        choices=("organ", "vessel", "tumor", "lesion"),
        help="the new class's kind (one per --add-class; default organ)",
    )
    p.add_argument(
        "--parent", action="append", help="the class the new class lies inside (one per --add-class)"
    )
    p.add_argument(
        "--freeze",
        choices=("none", "backbone", "old_classes"),
        default="none",
        help="with --init: keep the backbone, or everything but the added classes' heads, fixed",
    )
    p.add_argument("--clip-weights", help="a local CLIP weights file, to embed a CLIP model's new class")
    p.add_argument(
        "--release-backbone", choices=("unet", "swinunetr"), help="--init release file with ambiguous keys"
    )
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
    p.add_argument(
        "--include-held-out",
        action="store_true",
        help="train on the held-out scans too (default: they stay out, so evaluation stays honest)",
    )
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
