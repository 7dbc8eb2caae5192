"""The `radixpert` console script: one subcommand per stage.

    radixpert data prepare mimic-cxr --root DIR -o studies.jsonl views=PA,AP
    radixpert data instruct studies.jsonl -o conversations.jsonl
    radixpert train msa_lora --data-root DIR -o runs/msa stages.stage1.batch_size=8
    radixpert evaluate -r refs.json -c preds.json -o results.json
    radixpert label reports.csv -o labels.csv
    radixpert weights list | pull NAME        # metric model weights
    radixpert model list | info NAME          # model sizes and their parameter tables
    radixpert model export BUNDLE -o DIR      # a folder plain transformers / vLLM load
    radixpert config list | path NAME         # shipped recipes and accelerate configs

The same flag means the same thing everywhere: what a command reads is positional (a dataset,
a studies file, a recipe, a reports file); evaluation's two inputs with roles are `-r` and `-c`;
what a command writes is `-o/--out`; settings are `key=value` after the positional argument
(reader options, recipe overrides). An error in what the user gave is one line naming the file,
the field or the option (exit status 2); anything else is a bug in radixpert, said in one line
(exit status 70), with the traceback under `--verbose`.

Subcommands import their stage lazily, so `radixpert --help` loads no torch and no model.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from radixpert.errors import RadixpertError, UsageError
from radixpert.evaluate.io import SECTIONS  # stdlib only: keeps --help light

EXIT_USAGE = 2  # an error in what the user gave (argparse's own status for bad arguments)
EXIT_BUG = 70  # EX_SOFTWARE: an internal error


def _evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score candidate reports against references with the standard report metrics",
        description=(
            "Score candidate reports against reference reports, matched by id. Inputs: "
            "ReXrank-style JSON ({id: report} or records with id and report, or "
            "findings/impression), JSONL, or CSV with id and report columns. Ids match after "
            "Unicode NFC normalisation. The results file (--out) is strict JSON: a number "
            "that is not finite is null."
        ),
    )
    p.add_argument("--references", "-r", help="reference reports (.json, .jsonl, .csv)")
    p.add_argument("--candidates", "-c", help="candidate (model) reports, same layouts")
    p.add_argument(
        "--metrics",
        "-m",
        nargs="+",
        default=None,
        help="metric names or groups (lexical, default, rexrank, all); default: the metrics "
        "that need no model weights. See --list.",
    )
    p.add_argument(
        "--list",
        action="store_true",
        help="list metrics, variants and whether each can run here (and if not, why)",
    )
    p.add_argument(
        "--tasks",
        metavar="ANSWERS",
        help="score instruction-task answers instead: radixpert generate's output for "
        "conversations (classification F1, grounding / detection mAP@0.5 and mean IoU, token "
        "F1, per task)",
    )
    p.add_argument("--out", "-o", help="results JSON (written atomically; strict JSON)")
    p.add_argument("--per-sample", help="per-sample scores, CSV or .jsonl (one row per id)")
    p.add_argument(
        "--section",
        default="auto",
        choices=SECTIONS,
        help="which text to score when records have sections (default: the report "
        "field, else findings + impression; findings+impression-rexrank: the reference as "
        "ReXrank's script builds it, 'Findings: F Impression: I' with a missing one 'None')",
    )
    p.add_argument(
        "--split",
        default=None,
        help="only the references of this split (their split field, as in a Study file; "
        "radixpert generate --split answers one split)",
    )
    p.add_argument(
        "--id-column",
        metavar="NAME",
        default=None,
        help="the id's field or CSV column in both files, by exact name (default: id, "
        "study_id, uid, ...)",
    )
    p.add_argument(
        "--text-column",
        metavar="NAME",
        default=None,
        help="the report's field or CSV column in both files, by exact name (instead of "
        "--section's fields)",
    )
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="score the common ids when some ids are on one side only",
    )
    p.add_argument(
        "--skip-empty-references",
        action="store_true",
        help="leave out the pairs whose reference is blank (counted, ids in the results); "
        "without it a blank reference is an error",
    )
    p.add_argument(
        "--bootstrap", type=int, default=500, help="bootstrap resamples (0: none; at most 1e6)"
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (0 or more)")
    p.add_argument(
        "--tokenizer",
        default="basic",
        choices=["basic", "ptb", "none"],
        help="tokenisation for BLEU/ROUGE-L/CIDEr-D/METEOR: basic (Python, "
        "PTB-like), ptb (pycocoevalcap's Java PTBTokenizer), none (split on spaces)",
    )
    p.add_argument("--device", default=None, help="torch device for model-based metrics")
    p.add_argument(
        "--batch-size", type=int, default=None, help="batch size for model-based metrics"
    )
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="do not read or write the per-text cache of model outputs",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    judge = p.add_argument_group(
        "LLM judges (chexprompt, crimson-weighted, fineradscore, radfact, conversation-judge; "
        "docs/judges.md)"
    )
    judge.add_argument(
        "--judge-url", help="an OpenAI-compatible server (/v1) on this machine, e.g. vLLM"
    )
    judge.add_argument("--judge-model", help="the model name the server serves")
    judge.add_argument("--judge-api-key-env", help="environment variable holding its token")
    judge.add_argument(
        "--judge-allow-remote",
        action="store_true",
        help="allow a judge on another host: report text (patient data) then leaves this machine",
    )
    judge.add_argument("--judge-local", help="a transformers model folder or cached hub id")
    judge.add_argument(
        "--judge-workers", type=int, default=4, help="questions in flight at once (server)"
    )
    judge.add_argument(
        "--judge-retries", type=int, default=2, help="re-asks after an unparsable answer"
    )
    other = p.add_argument_group("other analyses")
    other.add_argument(
        "--against-raters",
        metavar="REXVAL",
        help="Kendall tau-b of --metrics against radiologists' error counts: ReXVal's folder "
        "or one of its two CSVs (docs/evaluation.md)",
    )
    other.add_argument(
        "--rater-errors",
        choices=("total", "significant", "insignificant"),
        default="total",
        help="--against-raters: which error counts (mean over raters; default total)",
    )
    other.add_argument(
        "--retrieval",
        action="store_true",
        help="image<->report recall@K of --model's contrastive encoder on --data "
        "(docs/retrieval.md)",
    )
    other.add_argument(
        "--model", help="--retrieval: a bundle, an open_clip folder or hf-hub:org/name"
    )
    other.add_argument("--data", help="--retrieval: Study records (.jsonl)")
    other.add_argument(
        "--head", help="--retrieval: the contrastive head (.safetensors or checkpoint folder)"
    )
    other.add_argument(
        "--k", type=int, nargs="+", default=[1, 5, 10], help="--retrieval: the K of recall@K"
    )
    p.set_defaults(func=_run_evaluate)


def _list_metrics() -> int:
    from radixpert.evaluate import registry

    rows = [("metric", "family", "runs here", "what")]
    notes = []
    for name, entry in registry.REGISTRY.items():
        try:
            reason = registry.create(name).check()
        except Exception as e:  # an import failure is itself the reason
            reason = f"cannot load: {type(e).__name__}: {e}"
        label = name if entry.variant_of is None else f"  {name} (variant of {entry.variant_of})"
        rows.append((label, entry.family, "yes" if reason is None else "no", entry.summary))
        if reason:
            notes.append(f"{name}: {reason}")
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
    print(
        "\ngroups: "
        + "; ".join(f"{g} = {' '.join(v)}" for g, v in registry.GROUPS.items() if g != "all")
    )
    if notes:
        print("\nwhy not:")
        for n in notes:
            print(f"  {n}")
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    if args.list:
        return _list_metrics()
    if args.tasks:
        return _score_tasks(args.tasks, args.out)
    if args.seed < 0:
        raise UsageError(f"--seed {args.seed}: a seed is 0 or more")
    if args.bootstrap < 0:
        raise UsageError(
            f"--bootstrap {args.bootstrap}: the number of resamples must be 0 (none) to 1,000,000"
        )
    if args.against_raters:
        from radixpert.evaluate import raters, registry

        return raters.main(
            args.against_raters,
            registry.expand(args.metrics or list(registry.DEFAULT)),
            out=args.out,
            bootstrap=args.bootstrap,
            seed=args.seed,
            quiet=args.quiet,
            variant=args.rater_errors,
            metric_options={**_metric_options(args)},
        )
    if args.retrieval:
        from radixpert.leaderboard import retrieval

        if not args.model or not args.data:
            raise UsageError("--retrieval needs --model and --data")
        return retrieval.main(
            args.model,
            args.data,
            split=args.split,
            out=args.out,
            k=args.k,
            head=args.head,
            batch_size=args.batch_size or 32,
            device=args.device,
            bootstrap=args.bootstrap,
            seed=args.seed,
            quiet=args.quiet,
        )
    if not args.references or not args.candidates:
        raise UsageError("--references and --candidates are required (or --list, --tasks)")
    for flag, path in (("--out", args.out), ("--per-sample", args.per_sample)):
        if path and Path(path).is_dir():
            raise UsageError(f"{flag} {path}: is a folder; give a file name")
    if args.text_column and args.section != "auto":
        raise UsageError("--text-column and --section choose the text two ways; give one")
    from radixpert.evaluate import registry
    from radixpert.evaluate.runner import (
        EvaluationOptions,
        evaluate,
        format_table,
        write_per_sample,
        write_results,
    )

    metric_options = _metric_options(args)
    if not args.quiet:  # the model-based metrics' cache and device notes
        logging.getLogger("radixpert").setLevel(logging.INFO)
    opts = EvaluationOptions(
        metrics=args.metrics or list(registry.DEFAULT),
        section=args.section,
        split=args.split,
        allow_missing=args.allow_missing,
        bootstrap=args.bootstrap,
        seed=args.seed,
        metric_options=metric_options,
        explicit=args.metrics is not None and not set(args.metrics) & set(registry.GROUPS),
        skip_empty_references=args.skip_empty_references,
        id_column=args.id_column,
        text_column=args.text_column,
        command=[Path(sys.argv[0]).name, *sys.argv[1:]],
    )
    results = evaluate(
        args.references, args.candidates, opts, progress=None if args.quiet else sys.stderr
    )
    print(format_table(results))
    if args.out:
        write_results(results, args.out)
        print(f"\nresults: {args.out}")
    if args.per_sample:
        write_per_sample(results, args.per_sample)
        print(f"per-sample scores: {args.per_sample}")
    return 0


def _metric_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options every metric is offered (each takes those its constructor accepts)."""
    options: dict[str, Any] = {"tokenizer": args.tokenizer, "cache": not args.no_cache}
    if args.device:
        options["device"] = args.device
    if args.batch_size:
        options["batch_size"] = args.batch_size
    if args.judge_url or args.judge_local:
        from radixpert.evaluate.judges.backend import backend_from_options

        options["backend"] = backend_from_options(
            args.judge_url,
            args.judge_model,
            args.judge_api_key_env,
            args.judge_allow_remote,
            args.judge_local,
            args.device,
        )
        options["judge_workers"] = args.judge_workers
        options["judge_retries"] = args.judge_retries
    return options


def _score_tasks(path: str, out: str | None) -> int:
    import json

    from radixpert.errors import InputError
    from radixpert.evaluate.tasks import task_scores
    from radixpert.io import write_json

    try:
        records = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(records, dict):
        raise InputError(f"{path}: expected {{id: record}} (radixpert generate's output)")
    try:
        scores = task_scores(records)
    except ValueError as e:
        raise InputError(f"{path}: {e}") from None
    main_keys = ("n", "micro_f1", "macro_f1", "map50", "mean_iou", "token_f1", "parsed")
    print(f"{'task':24s} " + " ".join(f"{k:>9s}" for k in main_keys))
    for task, values in scores.items():
        cells = [values.get(k, float("nan")) for k in main_keys]
        shown = " ".join(f"{v:9.0f}" if k == "n" else f"{v:9.4f}" for k, v in zip(main_keys, cells))
        print(f"{task:24s} {shown}".replace("nan", "  -"))
    if out:
        write_json(out, {"answers": str(path), "tasks": scores})
        print(f"\nresults: {out}")
    return 0


def _label_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "label",
        help="CheXpert-style labels from report text (rule-based; not CheXbert)",
        description="Label each report with the 14 CheXpert observations using radixpert's "
        "rule-based labeler: 1 positive, 0 negative, -1 uncertain, blank not mentioned.",
    )
    p.add_argument("reports", help="reports file (.csv, .json, .jsonl with id and report)")
    p.add_argument("--out", "-o", required=True, help="labels CSV (CheXpert layout)")
    p.add_argument(
        "--section",
        default="auto",
        choices=SECTIONS,
    )
    p.set_defaults(func=_run_label)


def _run_label(args: argparse.Namespace) -> int:
    from radixpert.evaluate.clinical.chexpert_rules import label_reports, write_label_csv
    from radixpert.evaluate.io import read_reports

    reports = read_reports(args.reports, args.section)
    ids = list(reports.texts)
    labels = label_reports([reports.texts[i] for i in ids])
    write_label_csv(ids, labels, args.out)
    print(f"labelled {len(ids)} reports -> {args.out}")
    return 0


def _weights_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "weights",
        help="list or fetch the model weights that metrics need (CheXbert, RadGraph, ...)",
        description="Weights of the model-based metrics live in $RADIXPERT_HOME/models/<name>; "
        "`pull` fetches them on a connected machine, copy that folder to offline ones. "
        "(Model sizes to train are `radixpert model list`.)",
    )
    wsub = p.add_subparsers(dest="weights_cmd", required=True)
    wsub.add_parser("list", help="known weights and whether they are present")
    pull = wsub.add_parser("pull", help="download weights (needs the network)")
    pull.add_argument("names", nargs="+", help="weight names (see `radixpert weights list`)")
    pull.add_argument("--force", action="store_true", help="download again")
    p.set_defaults(func=_run_weights)


def _run_weights(args: argparse.Namespace) -> int:
    from radixpert import weights

    if args.weights_cmd == "list":
        for name, spec in weights.REGISTRY.items():
            reason = weights.status(name)
            state = "present" if reason is None else "absent"
            print(f"{name:22s} {state:8s} {spec.repo_id:36s} used by: {spec.used_by}")
            print(f"{'':22s} {weights.local_dir(name)}")
        return 0
    for name in args.names:
        path = weights.pull(name, force=args.force)
        print(f"{name}: {path}")
    return 0


def _data_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="read datasets into Study records; generate phantoms",
        description="Datasets as their publishers ship them -> Study records (JSONL/Parquet).",
    )
    dsub = p.add_subparsers(dest="data_cmd", required=True)
    prep = dsub.add_parser(
        "prepare",
        help="read one dataset into Study records",
        description="Read a dataset, as its publisher ships it, into Study records.",
        formatter_class=_ReadersEpilog,
    )
    prep.add_argument("dataset", help="dataset name (listed below)")
    prep.add_argument(
        "overrides", nargs="*", metavar="key=value", help="reader options, e.g. views=PA,AP"
    )
    prep.add_argument("--root", required=True, help="the dataset's folder, as downloaded")
    prep.add_argument("--out", "-o", required=True, help="output .jsonl or .parquet")
    prep.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first record the reader would skip, naming its file and line",
    )
    prep.add_argument(
        "--no-check-images",
        dest="check_images",
        action="store_false",
        help="do not check that each image file exists under --root (missing ones are "
        "otherwise left out and counted)",
    )
    prep.add_argument(
        "--remove-priors",
        choices=["rules", "llm"],
        default=None,
        help="remove sentences about prior examinations (kept in extra)",
    )
    _add_llm_flags(prep)
    prep.set_defaults(func=_run_data)
    ins = dsub.add_parser("instruct", help="Study records -> instruction conversations")
    ins.add_argument("studies", help="Study records (.jsonl or .parquet)")
    ins.add_argument("--out", "-o", required=True, help="conversations (.jsonl)")
    ins.add_argument(
        "--tasks",
        nargs="+",
        default=[
            "report=1",
            "classification=1",
            "grounding-phrase=1",
            "detection=1",
            "conversation=1",
        ],
        metavar="TASK=WEIGHT",
        help="tasks and weights (conversations per study)",
    )
    ins.add_argument(
        "--repeat",
        nargs="*",
        default=[],
        metavar="DATASET=FACTOR",
        help="per-dataset repeat factors (default 1)",
    )
    ins.add_argument("--split", default=None, help="only studies of this split")
    ins.add_argument("--seed", type=int, default=0)
    _add_llm_flags(ins)
    ins.set_defaults(func=_run_data)
    sp = dsub.add_parser(
        "split",
        help="assign patient-level splits where none is given",
        description="Keep publishers' splits; assign the rest by patient, seeded.",
    )
    sp.add_argument("studies", help="Study records in (.jsonl or .parquet)")
    sp.add_argument("--out", "-o", required=True, help="Study records out")
    sp.add_argument(
        "--fractions", type=float, nargs=3, default=(0.8, 0.1, 0.1),
        metavar=("TRAIN", "VALIDATE", "TEST"),
    )  # fmt: skip
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument(
        "--stratify", default=None, help="an observation whose positives are balanced across splits"
    )
    sp.add_argument(
        "--with",
        dest="others",
        nargs="+",
        default=[],
        metavar="STUDIES",
        help="prepared datasets of the same source (e.g. MIMIC-CXR beside MS-CXR): their "
        "patients keep the split they have there, and leakage is checked across all",
    )
    sp.set_defaults(func=_run_data)
    ck = dsub.add_parser(
        "check",
        help="patients in two splits across prepared datasets; excluded images in training",
        description="Report patients whose studies lie in two splits, across every given file "
        "(datasets of one source, such as MIMIC-CXR, MS-CXR, Chest ImaGenome and ReXrank's "
        "MIMIC test set, share patients), and training or validation studies holding images "
        "a publisher asks to exclude. Exit status 1 when anything is found.",
    )
    ck.add_argument("studies", nargs="+", help="Study records (.jsonl or .parquet)")
    ck.add_argument(
        "--avoid",
        nargs="+",
        default=[],
        metavar="CSV",
        help="lists of images to keep out of training and validation, by a dicom_id column "
        "(Chest ImaGenome's silver_dataset/splits/images_to_avoid.csv)",
    )
    ck.add_argument("--max-listed", type=int, default=20, help="patients and studies listed")
    ck.set_defaults(func=_run_data)
    sm = dsub.add_parser(
        "sample",
        help="a stratified subset (balanced by label or modality), seeded",
        description="Draw N studies balanced by modality (equal shares, what a small modality "
        "cannot give goes to the others) or by label (each draw for the label with the fewest "
        "so far), as Radixpert drew 15,000 ROCO v2 samples and 16,000 PadChest studies.",
    )
    sm.add_argument("studies", help="Study records in (.jsonl or .parquet)")
    sm.add_argument("--out", "-o", required=True, help="Study records out")
    sm.add_argument("--n", type=int, required=True, help="how many studies to draw")
    sm.add_argument(
        "--stratify", choices=("labels", "modality", "none"), default="none",
        help="balance by positive labels, by modality, or draw uniformly (default)",
    )  # fmt: skip
    sm.add_argument(
        "--label-field",
        default=None,
        metavar="KEY",
        help="with --stratify labels: a list field of the studies' extra to read labels from "
        "(e.g. padchest_labels) instead of the 14 observations",
    )
    sm.add_argument("--split", default=None, help="only studies of this split")
    sm.add_argument("--seed", type=int, default=0)
    sm.set_defaults(func=_run_data)
    ph = dsub.add_parser(
        "phantoms",
        help="synthetic chest radiographs with known truth",
        description="Synthetic chest radiographs with boxes, labels, reports.",
    )
    from radixpert.data.phantoms import add_arguments  # numpy only: --help stays light

    add_arguments(ph)
    ph.set_defaults(func=_run_data)


def _data_check(args: argparse.Namespace) -> int:
    from collections import Counter

    from radixpert.data.readers import iter_csv
    from radixpert.data.splits import avoided, leaks, normalise_split
    from radixpert.data.study import read_studies

    studies = []
    for path in args.studies:
        these = list(read_studies(path))
        counts = Counter(normalise_split(s.split) or "(none)" for s in these)
        datasets = ", ".join(sorted({s.dataset for s in these}))
        print(f"{path}: {len(these):,} studies of {datasets or '-'}: "
              + ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())))  # fmt: skip
        studies += these
    found = leaks(studies)
    print(f"patients in more than one split: {len(found):,}")
    for leak in found[: args.max_listed]:
        print(f"  {leak.describe()}")
    bad = len(found)
    for csv_path in args.avoid:
        ids = {row["dicom_id"].strip() for _, row in iter_csv(Path(csv_path), ["dicom_id"])}
        hits = avoided(studies, ids)
        print(f"{csv_path}: {len(ids):,} images to avoid; {len(hits):,} training or validation "
              "studies hold one")  # fmt: skip
        for study, image_ids in hits[: args.max_listed]:
            print(f"  {study.dataset} {study.id} ({study.split}): {', '.join(image_ids)}")
        bad += len(hits)
    return 1 if bad else 0


def _run_data(args: argparse.Namespace) -> int:
    if args.data_cmd == "prepare":
        from radixpert.data.prepare import parse_options, prepare

        options = parse_options(args.dataset, args.overrides)
        transform = None
        if args.remove_priors:
            from radixpert.data.prepare import PriorRemover

            client = (
                _llm_client(args, "--remove-priors llm") if args.remove_priors == "llm" else None
            )
            transform = PriorRemover(args.remove_priors, client)
        prepare(
            args.dataset,
            args.root,
            args.out,
            progress=sys.stderr,
            transform=transform,
            strict=args.strict,
            check_images=args.check_images,
            **options,
        )
        if transform is not None:
            print(
                "prior-reference removal: "
                + ", ".join(f"{k} {v:,}" for k, v in sorted(transform.counts.items())),
                file=sys.stderr,
            )
        return 0
    if args.data_cmd == "split":
        from collections import Counter

        from radixpert.data.splits import assign_splits, check_no_leakage, patient_splits
        from radixpert.data.study import read_studies, write_studies

        others = [s for path in args.others for s in read_studies(path)]
        studies = assign_splits(
            list(read_studies(args.studies)),
            tuple(args.fractions),
            seed=args.seed,
            stratify_by=args.stratify,
            fixed=patient_splits(others),
        )
        check_no_leakage(studies + others)
        write_studies(studies, args.out)
        counts = Counter(s.split for s in studies)
        print(
            f"{len(studies):,} studies -> {args.out}: "
            + ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()))
        )
        return 0
    if args.data_cmd == "check":
        return _data_check(args)
    if args.data_cmd == "sample":
        from radixpert.data.sample import sample_studies
        from radixpert.data.splits import normalise_split
        from radixpert.data.study import read_studies, write_studies
        from radixpert.io import write_json

        want = normalise_split(args.split) if args.split else None
        studies = [
            s
            for s in read_studies(args.studies)
            if want is None or normalise_split(s.split) == want
        ]
        stratify = None if args.stratify == "none" else args.stratify
        subset, report = sample_studies(studies, args.n, stratify, args.seed, args.label_field)
        write_studies(subset, args.out)
        stats = Path(args.out).with_suffix(".sample.json")
        write_json(stats, {**report.to_dict(), "seed": args.seed, "from": str(args.studies),
                           "split": want, "label_field": args.label_field})  # fmt: skip
        if len(subset) < args.n:
            print(f"radixpert data sample: only {len(studies):,} studies; all are kept",
                  file=sys.stderr)  # fmt: skip
        print(f"{len(subset):,} of {len(studies):,} studies -> {args.out} "
              f"(by {report.stratify}, seed {args.seed}; counts in {stats})")  # fmt: skip
        for line in report.lines():
            print(line)
        return 0
    if args.data_cmd == "phantoms":
        from radixpert.data.phantoms import run

        return run(args)
    if args.data_cmd == "instruct":
        from collections import Counter

        from radixpert.data.study import read_studies
        from radixpert.instruct.conversation import write_conversations
        from radixpert.instruct.mixture import build_mixture

        weights, repeats = _pairs(args.tasks, "--tasks"), _pairs(args.repeat, "--repeat")
        studies = (
            s for s in read_studies(args.studies) if args.split is None or s.split == args.split
        )
        counts: Counter = Counter()
        objects = {}
        if "conversation-llm" in weights:
            from radixpert.instruct.llm_tasks import LLMConversationTask

            client = _llm_client(args, "--tasks conversation-llm")
            objects["conversation-llm"] = LLMConversationTask(client)
        mixture = build_mixture(studies, weights, repeats, args.seed, counts, objects)
        n = write_conversations(mixture, args.out)
        print(f"{n:,} conversations -> {args.out}")
        for k, v in sorted(counts.items()):
            print(f"  {k}: {v:,}")
        return 0
    return 2


def _add_llm_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("optional local LLM (off unless --llm-url is given)")
    g.add_argument(
        "--llm-url",
        default=None,
        help="OpenAI-compatible endpoint on this machine, e.g. http://127.0.0.1:8000/v1",
    )
    g.add_argument("--llm-model", default=None, help="model name the endpoint serves")
    g.add_argument("--llm-api-key-env", default=None, help="env variable with a bearer token")
    g.add_argument(
        "--llm-allow-remote",
        action="store_true",
        help="allow an endpoint on another host: report text then leaves this machine",
    )


def _llm_client(args: argparse.Namespace, needed_by: str) -> object:
    from radixpert.llm import ChatClient

    if not args.llm_url or not args.llm_model:
        raise UsageError(f"{needed_by} needs --llm-url and --llm-model (a local endpoint)")
    return ChatClient(args.llm_url, args.llm_model, args.llm_api_key_env, args.llm_allow_remote)


def _pairs(items: list[str], flag: str) -> dict[str, float]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            out[key] = float(value) if sep else 1.0
        except ValueError:
            raise UsageError(f"{flag} {item!r}: expected NAME=NUMBER") from None
    return out


def _model_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "model",
        help="model sizes to train, their parameter tables, and export for serving",
        description="The named model sizes (published checkpoints' shapes and tiny ones) and "
        "their component and ablation tables. (Metric weights are `radixpert weights`.)",
    )
    msub = p.add_subparsers(dest="model_cmd", required=True)
    msub.add_parser("list", help="every size name, its family and what it is")
    info = msub.add_parser(
        "info",
        help="component and ablation tables of a size, checkpoint or config; a recipe's counts",
        description="NAME is a size (`radixpert model list`), a Hugging Face id in the local "
        "cache or a model folder / config.json (built on the meta device: no weights read), "
        "or a recipe (a shipped name or a YAML file): then the parameters total and trainable "
        "per component in each stage, exactly as the run will have them (LoRA targets, HCF "
        "width, MSA-LoRA ranks).",
    )
    info.add_argument("name", help="a size, a hub id, a model folder or config.json, a recipe")
    info.add_argument(
        "overrides", nargs="*", metavar="key=value", help="recipe overrides (recipes only)"
    )
    info.add_argument("--lora-rank", type=int, default=64)
    export = msub.add_parser(
        "export",
        help="a bundle as a folder plain transformers / vLLM / SGLang load (LoRA merged)",
        description="Writes the bundle's model with its LoRA merged, its transformers processor "
        "and chat template, and a greedy generation_config.json; HCF models carry their code "
        "(load with trust_remote_code=True). --adapter-only writes the LoRA adapter alone in "
        "peft's layout, for vLLM's --lora-modules. See docs/models.md, 'Export for serving'.",
    )
    export.add_argument("bundle", help="a model folder written by `radixpert train`")
    export.add_argument("-o", "--out", required=True, help="the folder to write (replaced)")
    export.add_argument(
        "--adapter-only", action="store_true", help="only the LoRA adapter, in peft's layout"
    )
    export.add_argument(
        "--base",
        default=None,
        help="--adapter-only: the base model folder or hub id to record "
        "(default: the recipe's model.pretrained)",
    )
    p.set_defaults(func=_run_model)


def _run_model(args: argparse.Namespace) -> int:
    if args.model_cmd == "list":
        from radixpert.vocab import SIZES

        print(f"{'size':<22} {'family':<16} what")
        for name, size in SIZES.items():
            what = (
                "published checkpoint's config (meta device, no weights)"
                if size.published
                else "tiny, random weights"
                + "".join(f", {k} {v}" for k, v in sorted(size.options.items()))
            )
            print(f"{name:<22} {size.family:<16} {what}")
        return 0
    if args.model_cmd == "export":
        from radixpert.models.export import export_for_serving

        out = export_for_serving(args.bundle, args.out, args.adapter_only, args.base)
        print(f"exported: {out}")
        return 0
    recipe = _recipe_or_none(args.name)
    if recipe is not None:
        print(_recipe_parameters(recipe, args.overrides))
        return 0
    if args.overrides:
        raise UsageError(f"model info {args.name}: key=value overrides are for recipes only")
    from radixpert.models.info import model_info

    print(model_info(args.name, args.lora_rank))
    return 0


def _recipe_or_none(name: str) -> Path | None:
    """The recipe file ``name`` names (a shipped recipe or a YAML file), or None."""
    from radixpert.train.recipe import shipped_recipes_dir

    if name.endswith((".yaml", ".yml")) and Path(name).is_file():
        return Path(name)
    shipped = shipped_recipes_dir() / f"{name}.yaml"
    return shipped if shipped.is_file() else None


def _recipe_parameters(path: Path, overrides: list[str]) -> str:
    """Per stage of a recipe: total and trainable parameters per component (meta device)."""
    from radixpert.train.plan import plan_recipe
    from radixpert.train.recipe import load_recipe

    # Data paths are not read: only the model and the stages' trainability matter here.
    recipe = load_recipe(path, overrides, data_root=".")
    plan = plan_recipe(recipe)
    model = recipe.model
    what = model.pretrained or model.size or dict(model.parts or {})
    lines = [f"recipe {recipe.name}: {model.family}, {what}"]
    for stage in plan.stages:
        lines += ["", f"stage {stage.stage.name}",
                  f"  {'component':<16} {'parameters':>16} {'trainable':>16} {'%':>8}"]  # fmt: skip
        for row in stage.parameters:
            share = 100.0 * row["trainable"] / row["total"] if row["total"] else 0.0
            lines.append(f"  {row['component']:<16} {row['total']:>16,} "
                         f"{row['trainable']:>16,} {share:>7.3f}%")  # fmt: skip
    return "\n".join(lines)


def _config_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "config",
        help="the shipped training recipes and accelerate configs",
        description="Configs shipped inside the package: training recipes (`radixpert train "
        "NAME` takes them by name) and accelerate configs (`accelerate launch --config_file "
        '"$(radixpert config path accelerate/ddp)" -m radixpert train ...`).',
    )
    csub = p.add_subparsers(dest="config_cmd", required=True)
    csub.add_parser("list", help="every shipped config, as KIND/NAME, and its path")
    path = csub.add_parser("path", help="the file of one shipped config")
    path.add_argument("name", help="KIND/NAME, e.g. accelerate/ddp or recipes/msa_lora")
    p.set_defaults(func=_run_config)


def _run_config(args: argparse.Namespace) -> int:
    from radixpert.errors import UnknownName
    from radixpert.paths import CONFIG_KINDS, configs_dir

    shipped = {
        f"{kind}/{f.stem}": f
        for kind in CONFIG_KINDS
        for f in sorted(configs_dir(kind).glob("*.yaml"))
    }
    if args.config_cmd == "list":
        width = max(map(len, shipped))
        for name, f in shipped.items():
            print(f"{name:<{width}}  {f}")
        return 0
    name = args.name.removesuffix(".yaml")
    if name not in shipped:
        raise UnknownName(f"no shipped config {args.name!r}; shipped: {', '.join(shipped)}")
    print(shipped[name])
    return 0


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model with a staged recipe",
        description="Runs a recipe's stages in order (a YAML file, or a shipped recipe by name: "
        "`radixpert config list`). A killed run resumes: finished stages are skipped, the "
        "unfinished one continues from its newest checkpoint. Scale out with `accelerate launch "
        '--config_file "$(radixpert config path accelerate/ddp)" -m radixpert train ...`.',
    )
    p.add_argument("recipe", help="recipe file, or a shipped name: msa_lora, llava_rad, ...")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="e.g. stages.stage1.optimizer.lr=1e-4"
    )
    p.add_argument("--data-root", help="what ${data} in the recipe stands for")
    p.add_argument("--out", "-o", help="run folder (default: $RADIXPERT_HOME/<recipe output_dir>)")
    p.add_argument("--stages", help="comma-separated stage names to run (earlier ones done)")
    p.add_argument("--no-resume", action="store_true", help="start every stage afresh")
    p.add_argument(
        "--log-with",
        default="tensorboard",
        help="accelerate trackers, comma-separated: tensorboard, mlflow, or none",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (parameters, steps, per-GPU memory of each stage), check that "
        "the data files exist, and stop",
    )
    p.add_argument(
        "--gpus",
        type=int,
        help="GPUs the run is spread over (default: the launcher's WORLD_SIZE, else 1)",
    )
    p.add_argument(
        "--gpu-memory",
        help="memory of one card, e.g. 80GB, 80GiB, 141GB (default: the current CUDA "
        "device's, if any; else no card check)",
    )
    p.add_argument(
        "--strategy",
        choices=("ddp", "fsdp", "zero2", "zero3"),
        help="how the run is sharded (default: what accelerate launch set up, else ddp)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="launch even if the memory estimate exceeds the card",
    )
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from radixpert.errors import RecipeError
    from radixpert.paths import home
    from radixpert.train.recipe import describe, load_recipe, recipe_path

    try:
        recipe = load_recipe(recipe_path(args.recipe), args.overrides, data_root=args.data_root)
    except RecipeError as e:
        print(f"radixpert train: error: {e}", file=sys.stderr)
        return 2
    print(describe(recipe))
    if args.dry_run or not args.force:
        import os

        from radixpert.train import plan as planning

        card = planning.parse_memory(args.gpu_memory) if args.gpu_memory else planning.cuda_memory()
        if args.dry_run or card is not None:  # a launch is checked only against a known card
            try:
                plan = planning.plan_recipe(
                    recipe,
                    gpus=args.gpus or int(os.environ.get("WORLD_SIZE", "1")),
                    gpu_memory=card,
                    strategy=args.strategy or planning.strategy_from_env(),
                )
            except RecipeError as e:  # no shape-only build of this model: say so, go on
                if args.dry_run:
                    raise
                print(f"radixpert train: warning: no memory check: {e}", file=sys.stderr)
                plan = None
            if args.dry_run:
                print(planning.format_plan(plan))
            for problem in plan.missing if plan else ():
                print(f"radixpert train: error: {problem}", file=sys.stderr)
            if plan and plan.missing:
                return 2
            if args.dry_run:
                return 0
            if plan:
                planning.check_fits(plan)
    from radixpert.train.runner import run_recipe

    out = Path(args.out) if args.out else home() / recipe.output_dir
    trackers = [t for t in args.log_with.split(",") if t and t != "none"]
    summary = run_recipe(
        recipe,
        out,
        only=args.stages.split(",") if args.stages else None,
        resume=not args.no_resume,
        log_with=trackers,
    )
    for name, result in summary["stages"].items():
        loss = result.get("final_loss")
        val = (result.get("validation") or {}).get("val_loss")
        print(
            f"{name}: {result.get('steps')} steps, loss {loss if loss is None else f'{loss:.4f}'}"
            + (f", val_loss {val:.4f}" if val is not None else "")
        )
    print(f"model: {summary['final_bundle']}")
    return 0


def _demo_parser(sub: argparse._SubParsersAction) -> None:
    from radixpert.demo.pipeline import DEFAULT_PHANTOMS

    p = sub.add_parser(
        "demo",
        help="the whole pipeline on synthetic phantoms, on a CPU",
        description="Phantoms -> instruction set -> the demo recipe (and an image-shuffled "
        "control) -> reports and boxes on held-out phantoms -> metrics -> OUT/index.html and "
        "OUT/summary.json. Re-running skips finished steps.",
    )
    p.add_argument("--out", "-o", default="runs/demo", help="demo folder (default runs/demo)")
    p.add_argument("--phantoms", type=int, default=DEFAULT_PHANTOMS, help="phantoms to draw")
    p.add_argument("--no-control", action="store_true", help="skip the shuffled-image control")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="demo recipe overrides")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from radixpert.demo.pipeline import run_demo
    from radixpert.errors import RecipeError

    try:
        summary = run_demo(
            args.out, phantoms=args.phantoms, overrides=args.overrides, control=not args.no_control
        )
    except (RecipeError, ValueError) as e:
        print(f"radixpert demo: error: {e}", file=sys.stderr)
        return 2
    rows = ("findings_f1", "grounding_map50", "laterality_acc", "bleu-4", "rouge-l", "cider-d")
    print(f"{'metric':<18}{'model':>10}{'control':>10}")
    for key in rows:
        m, c = summary["model"].get(key), summary["control"].get(key)
        print(f"{key:<18}{_fmt(m):>10}{_fmt(c):>10}")
    print(f"training: {summary['train_seconds']:.0f} s; page: {Path(args.out) / 'index.html'}")
    return 0


def _fmt(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.3f}"


def build_parser() -> argparse.ArgumentParser:
    from radixpert import __version__

    parser = argparse.ArgumentParser(
        prog="radixpert",
        description="Radiology vision-language models: datasets, training, inference and "
        "the standard report metrics. Everything runs locally.",
    )
    parser.add_argument("--version", action="version", version=f"radixpert {__version__}")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _data_parser(sub)
    _train_parser(sub)
    _demo_parser(sub)
    # Commands that keep their parser beside their code (their heavy imports stay inside).
    from radixpert import serve
    from radixpert.infer import attention, batch, chat
    from radixpert.leaderboard import run as benchmark
    from radixpert.leaderboard import site

    batch.add_parser(sub)  # generate
    _evaluate_parser(sub)
    benchmark.add_parser(sub)
    site.add_parser(sub)  # leaderboard
    chat.add_parser(sub)
    attention.add_parser(sub)  # explain
    serve.add_parser(sub)
    _label_parser(sub)
    _model_parser(sub)
    _weights_parser(sub)
    _config_parser(sub)
    return parser


def _is_pair(arg: str) -> bool:
    key, sep, _ = arg.partition("=")
    return bool(sep and key) and not arg.startswith("-")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value settings may also come after the options.
    if extra and hasattr(args, "overrides") and not any(e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    bad = [o for o in getattr(args, "overrides", []) if not _is_pair(o)]
    if bad:
        parser.error(f"expected key=value settings, got: {' '.join(bad)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except (RadixpertError, OSError) as e:  # what the user gave: a file, a record, a name
        if args.verbose:
            raise
        print(f"radixpert {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"radixpert {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.verbose:
            raise
        frame = traceback.extract_tb(e.__traceback__)[-1]
        message = (str(e).splitlines() or [""])[0]  # one line, whatever the exception says
        print(
            f"radixpert {args.command}: internal error (a bug in radixpert): "
            f"{type(e).__name__}: {message} [{Path(frame.filename).name}:{frame.lineno}]; "
            f"`radixpert --verbose {args.command} ...` shows the traceback; please report it",
            file=sys.stderr,
        )
        return EXIT_BUG


class _ReadersEpilog(argparse.RawDescriptionHelpFormatter):
    """`data prepare --help` ends with every reader and its options, read from the readers
    themselves (imported only when the help is shown)."""

    def format_help(self) -> str:
        from radixpert.data.prepare import describe_readers

        return super().format_help() + "\n" + describe_readers() + "\n"


if __name__ == "__main__":
    sys.exit(main())
