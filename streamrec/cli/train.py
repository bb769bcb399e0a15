"""CLI for teaching new activities and shipping models: ``dataset``, ``train``, ``lr-find``, ``evaluate``,
``export``, ``quantize``."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from streamrec.catalog import DEFAULT_MODEL
from streamrec.fsutil import check_apart, check_output
from streamrec.validate import LR_FIND_STEPS, LR_FIND_STEPS_RANGE, MAX_BATCH, finite_float, whole_number

MAX_WORKERS = 64  # data loader processes
MAX_SEED = 2**32 - 1  # what numpy and torch take


DATASET_EXAMPLES = """examples:
  streamrec dataset data/                                classes, clips, frames and resolutions per split
  streamrec dataset data/ --val-split 0.2 --csv catalog.csv
  streamrec dataset data/ --sheet sheet.png              first and last frames of the training clips
"""
TRAIN_EXAMPLES = """examples:
  streamrec train data/ --epochs 10 --out model.pt       fine-tune r2plus1d_18's head on data/train
  streamrec train data/ --model tiny3d --weights none --no-flip --epochs 20
  streamrec train data/ --out model.pt --resume          go on after an interruption
"""
LR_FIND_EXAMPLES = """examples:
  streamrec lr-find data/                                suggests a --lr for train; plot in lr_find.png
  streamrec lr-find data/ --model tiny3d --weights none --batch-size 4 --plot lr.png
"""
EVALUATE_EXAMPLES = """examples:
  streamrec evaluate data/valid --weights model.pt
  streamrec evaluate data/valid --weights model.pt --confusion confusion.csv --json
  streamrec evaluate data/ --val-split 0.2 --weights model.pt   the clips train --val-split 0.2 held out
"""
EXPORT_EXAMPLES = """examples:
  streamrec export --weights model.pt                    model.ts (TorchScript)
  streamrec export --weights model.pt --format onnx --out model.onnx
"""
QUANTIZE_EXAMPLES = """examples:
  streamrec quantize --clips demo/clips                  int8 r2plus1d_18 for --backend openvino-int8
  streamrec quantize --weights model.pt --clips data/valid --min-agreement 0.95
"""


def add_parsers(sub, model_args) -> None:
    add_fit_parsers(sub)
    add_model_file_parsers(sub)


def add_fit_parsers(sub) -> None:
    """``dataset``, ``train`` and ``lr-find``."""
    p = sub.add_parser("dataset", help="catalog a folder of labelled clips", epilog=DATASET_EXAMPLES)
    p.add_argument("data", help="DATA/train/<class>/*, and DATA/valid/<class>/* if you have one")
    p.add_argument("--val-split", type=finite_float("--val-split"), default=None,
                   help="fraction of DATA/train held out for validation (default: none; DATA/valid is used)")
    p.add_argument("--csv", default=None, help="write the catalog here (default: printed only)")
    p.add_argument("--sheet", default=None, help="write a contact sheet PNG (first/last frames) here (default: none)")
    p.set_defaults(func=cmd_dataset)

    p = sub.add_parser("train", help="fine-tune a model on DATA/train, validate on DATA/valid", epilog=TRAIN_EXAMPLES)
    _data_args(p)
    p.add_argument("--epochs", type=whole_number("--epochs", 10**6), default=10, help="passes over DATA/train")
    p.add_argument("--lr", type=finite_float("--lr"), default=None,
                   help="peak learning rate, after one warm-up epoch (default 1e-3 for the head only, 3e-3 for every layer)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--freeze-backbone", dest="freeze_backbone", action="store_true", default=None,
                   help="train only the new head (the default on pretrained weights; refused on random ones)")
    g.add_argument("--finetune-all", dest="freeze_backbone", action="store_false",
                   help="train every layer (the default on random weights: --weights none, tiny3d)")
    p.add_argument("--patience", type=whole_number("--patience", 10**6), default=5, help="early stopping: epochs without val-loss improvement")
    p.add_argument("--out", default="model.pt", help="the checkpoint (best validation loss); "
                   "<out>.state and <out>.log.csv beside it")
    p.add_argument("--resume", action="store_true", help="go on from <out>.state, the last finished epoch")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run's <out> (and its .state and .log.csv); without it, train refuses to")
    p.add_argument("--quiet", action="store_true", help="no progress bar (there is none when stderr is not a terminal)")
    p.add_argument("--allow-chance", action="store_true",
                   help="save the model even when it does no better than chance on the validation clips "
                        "(else nothing is saved and train exits with code 1)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("lr-find", help="learning-rate range test", epilog=LR_FIND_EXAMPLES)
    _data_args(p)
    p.add_argument("--plot", default="lr_find.png", help="loss against learning rate, with the suggestion (PNG)")
    p.add_argument("--steps", type=whole_number("--steps", LR_FIND_STEPS_RANGE[1]), default=LR_FIND_STEPS,
                   help=f"optimizer steps from a rate of 1e-6 to 1 (default {LR_FIND_STEPS}; fewer: quicker, a coarser curve)")
    p.add_argument("--finetune-all", dest="freeze_backbone", action="store_false", default=None,
                   help="test every layer, as train --finetune-all trains (default: what train trains by default)")
    p.set_defaults(func=cmd_lr_find)


def _data_args(p) -> None:
    """The options ``train`` and ``lr-find`` share: data, model and loading."""
    p.add_argument("data", help="DATA/train/<class>/* (and DATA/valid/<class>/* unless --val-split)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="video classifier to start from")
    p.add_argument("--weights", default="DEFAULT", help="DEFAULT (Kinetics-400; random for tiny3d), none, or a checkpoint PATH")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--batch-size", type=whole_number("--batch-size", MAX_BATCH), default=8, help="clips per step")
    p.add_argument("--val-split", type=finite_float("--val-split"), default=None,
                   help="fraction of DATA/train held out for validation (default: none; DATA/valid is used)")
    p.add_argument("--no-flip", dest="flip", action="store_false", help="no horizontal flips (direction matters)")
    p.add_argument("--color-jitter", type=finite_float("--color-jitter"), default=0.0, help="brightness/contrast/saturation jitter strength, 0 = off, below 1")
    p.add_argument("--workers", type=whole_number("--workers", MAX_WORKERS), default=None, help="data loader processes (default: cores - 1, at most 8; 0 on 2 cores or fewer)")
    p.add_argument("--cache-dir", default=None, help="decoded clips cached here (default DATA/.streamrec-cache)")
    p.add_argument("--seed", type=whole_number("--seed", MAX_SEED), default=0, help="random seed (shuffling, augmentation, initial weights)")


def add_model_file_parsers(sub) -> None:
    """``evaluate``, ``export`` and ``quantize``."""
    p = sub.add_parser("evaluate", help="top-1/5, per-class precision/recall, confusion matrix", epilog=EVALUATE_EXAMPLES)
    p.add_argument("folder", help="a folder of class folders, e.g. DATA/valid (DATA itself with --val-split)")
    p.add_argument("--val-split", type=finite_float("--val-split"), default=None,
                   help="evaluate only the clips that train --val-split held out of FOLDER (default: every clip)")
    p.add_argument("--weights", required=True, help="the checkpoint (or exported file) to evaluate (required)")
    p.add_argument("--model", default=None, help="expected model name (default: the checkpoint's)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--batch-size", type=whole_number("--batch-size", MAX_BATCH), default=8, help="windows per forward pass")
    p.add_argument("--confusion", default="confusion.png", help="confusion matrix: a PNG, or a .csv of the counts")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="write a TorchScript or ONNX file that carries its class names", epilog=EXPORT_EXAMPLES)
    p.add_argument("--weights", default=None, help="the checkpoint to export (required)")
    p.add_argument("checkpoint", nargs="?", default=None, help=argparse.SUPPRESS)  # the older spelling, still read
    p.add_argument("--format", choices=("torchscript", "onnx"), default="torchscript", help="file format")
    p.add_argument("--out", default=None, help="the file to write (default: the checkpoint's name with .ts or .onnx)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("quantize", help="make an int8 model for --backend openvino-int8, checked against fp32 on your clips",
                       epilog=QUANTIZE_EXAMPLES)
    p.add_argument("--model", default=None, help=f"video classifier (default {DEFAULT_MODEL}, or the checkpoint's)")
    p.add_argument("--weights", default="DEFAULT", help="DEFAULT (Kinetics-400) or a checkpoint / state_dict PATH")
    p.add_argument("--clips", nargs="+", required=True, help="video files or folders of them, like what the cameras see (required)")
    p.add_argument("--stride", type=finite_float("--stride"), default=1.0, help="seconds between windows taken from the clips")
    p.add_argument("--min-agreement", type=finite_float("--min-agreement"), default=0.9,
                   help="keep the model only if its top-1 equals fp32's on this fraction of the checked windows")
    p.add_argument("--max-score-diff", type=finite_float("--max-score-diff"), default=0.1,
                   help="keep the model only if no softmax score differs from fp32's by more than this")
    p.add_argument("--threads", type=whole_number("--threads", 10**9), default=None, help="CPU threads for inference (default: cores - 1, at least 1)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_quantize)


def _train_config(args):
    from streamrec.offline.train import TrainConfig

    keys = ("model", "weights", "device", "epochs", "batch_size", "lr", "freeze_backbone", "val_split", "patience",
            "flip", "color_jitter", "workers", "cache_dir", "seed", "out", "resume", "quiet", "allow_chance")
    return TrainConfig(data=args.data, **{k: getattr(args, k) for k in keys if hasattr(args, k)})


def check_cache_dir(args, outputs: dict[str, str | Path]) -> None:
    """``--cache-dir`` a folder outside DATA (a cache inside it would read as one more class
    folder), and none of the command's ``outputs`` (option: path): the run would end unwritten."""
    from streamrec.errors import StreamrecError
    from streamrec.validate import not_a_file

    cache = getattr(args, "cache_dir", None)
    if cache and Path(cache).exists() and not Path(cache).is_dir():
        what = "a file" if Path(cache).is_file() else not_a_file(cache)
        raise StreamrecError(f"--cache-dir {cache}: expected a folder (or a new one's name), got {what}")
    if cache and Path(args.data).is_dir() and Path(cache).resolve().is_relative_to(Path(args.data).resolve()):
        raise StreamrecError(f"--cache-dir {cache}: inside the dataset folder {args.data}, where it would read as a "
                             "class folder; expected a folder outside it")
    for option, path in outputs.items() if cache else ():
        if Path(os.path.abspath(cache)).resolve() == Path(os.path.abspath(path)).resolve():
            raise StreamrecError(f"--cache-dir {cache}: the file {option} writes; expected a folder of its own")


def cmd_dataset(args) -> int:
    from streamrec.offline.dataset import discover, too_few_classes
    from streamrec.offline.inventory import catalog, contact_sheet, write_catalog_csv

    if args.csv:
        check_output("--csv", args.csv, data=args.data)
    if args.sheet:
        check_output("--sheet", args.sheet, image=True, data=args.data)
    check_apart({"--csv": args.csv, "--sheet": args.sheet})
    splits = discover(args.data, val_split=args.val_split)
    rows = catalog(splits)
    print(f"{'split':<6} {'class':<24} {'clips':>5} {'frames':>7} {'secs':>7} {'fps':>11}  {'resolutions':<20} unreadable")
    for r in rows:
        fps = f"{r['fps_min']}-{r['fps_max']}" if r["fps_min"] != r["fps_max"] else str(r["fps_min"])
        print(f"{r['split']:<6} {r['class']:<24} {r['clips']:>5} {r['frames']:>7} {r['duration_s']:>7.1f} {fps:>11}  "
              f"{r['resolutions']:<20} {r['unreadable']}")
    problem = too_few_classes(args.data, splits["train"].classes)
    if problem:
        print(f"warning: {problem}: train refuses it", file=sys.stderr)
    if args.val_split is not None:
        print(f"--val-split {args.val_split:g} holds out {len(splits['valid'].samples)} clips, the same ones for "
              f"'train {args.data} --val-split {args.val_split:g}' and 'evaluate {args.data} --val-split "
              f"{args.val_split:g}'", file=sys.stderr)
    if args.csv:
        write_catalog_csv(rows, args.csv)
        print(f"wrote the catalog to {args.csv}", file=sys.stderr)
    if args.sheet:
        shown = contact_sheet(splits["train"], args.sheet)
        print(f"wrote the contact sheet ({shown} clips) to {args.sheet}", file=sys.stderr)
    return 0


def cmd_train(args) -> int:
    from dataclasses import replace

    from streamrec.errors import StreamrecError
    from streamrec.offline.resume import run_of, run_options
    from streamrec.offline.train import TrainConfig, side_files, train
    from streamrec.redact import printable

    inputs = tuple(w for w in (args.weights,) if w)
    check_output("--out", args.out, inputs=inputs, data=args.data)
    for side in side_files(args.out):  # written too: the same checks, before any training
        check_output(f"--out ({side.name[len(Path(args.out).name):]} beside it)", side, inputs=inputs, data=args.data)
    earlier = [p for p in (Path(args.out), *side_files(args.out)) if os.path.lexists(p)]
    if earlier and not args.resume and not args.overwrite:  # an earlier run's model and the state to resume it
        raise StreamrecError(f"--out {printable(args.out)}: an earlier run's {', '.join(printable(p.name) for p in earlier)} "
                             "would be replaced; give another --out, --resume to go on with that run, or --overwrite")
    check_cache_dir(args, {"--out": args.out, **{f"--out ({side.name[len(Path(args.out).name):]} beside it)": side
                                                 for side in side_files(args.out)}})
    cfg = _train_config(args)
    if cfg.resume:  # the run's own options, before a model is loaded (or downloaded)
        run = run_of(side_files(args.out)[1], run_options(cfg), run_options(TrainConfig(data=cfg.data)))
        try:
            cfg = replace(cfg, **run)
        except (TypeError, ValueError):
            raise StreamrecError(f"--resume: {printable(args.out)}.state is not a training state (its options are not "
                                 "what train writes); train afresh without --resume") from None
    result = train(cfg)
    if not result["history"]:  # --resume of a run that had done its --epochs: nothing written
        print(f"streamrec: nothing to train: the state of {args.out} has done all {args.epochs} epochs (raise "
              "--epochs to train on)" + ("" if Path(args.out).is_file() else f"; it saved no model at {args.out}"),
              file=sys.stderr)
        return 0 if Path(args.out).is_file() else 1
    print(f"best validation loss {result['best_val_loss']:.4f}", file=sys.stderr)
    if result["warning"]:
        print(result["warning"], file=sys.stderr)
    for what, path in result["files"].items():
        print(f"wrote {path} ({what})", file=sys.stderr)
    saved = "the checkpoint" in result["files"]
    return 0 if result["beats_chance"] or (args.allow_chance and saved) else 1


def cmd_lr_find(args) -> int:
    from streamrec.offline.lrfind import lr_find

    check_output("--plot", args.plot, image=True, data=args.data)
    check_cache_dir(args, {"--plot": args.plot})
    lr = lr_find(_train_config(args), steps=args.steps, plot=args.plot)
    print(f"suggested learning rate: {lr:.2e} (plot: {args.plot})")
    return 0


def cmd_evaluate(args) -> int:
    from streamrec.offline.evaluate import evaluate

    from streamrec.errors import StreamrecError
    from streamrec.fsutil import IMAGE_SUFFIXES

    suffix = Path(args.confusion).suffix.lower()
    if suffix != ".csv" and suffix not in IMAGE_SUFFIXES:
        raise StreamrecError(f"--confusion {args.confusion}: expected a file name ending in .csv, "
                             f"{', '.join(IMAGE_SUFFIXES)}, got {suffix or 'no suffix'!r}")
    check_output("--confusion", args.confusion, image=suffix != ".csv", data=args.folder,
                 inputs=(args.weights,) if args.weights.upper() not in ("DEFAULT", "NONE") else ())
    r = evaluate(args.folder, weights=args.weights, model=args.model, device=args.device,
                 batch_size=args.batch_size, confusion=args.confusion, val_split=args.val_split)
    if r["training_clips"]:
        print(f"warning: {r['training_clips']} of the {r['clips']} clips evaluated are clips this model was trained "
              "on, so the scores overstate it; evaluate the clips it did not see (DATA/valid, or DATA --val-split "
              "as in training)", file=sys.stderr)
    present = [c for c, m in r["per_class"].items() if m["support"]]
    if len(present) < len(r["per_class"]):
        print(f"warning: the clips hold {len(present)} of the model's {len(r['per_class'])} classes "
              f"({', '.join(present)}): top-1 is how often those were found, not how well the model tells its "
              "classes apart", file=sys.stderr)
    if args.json:
        print(json.dumps(r, indent=1))
        print(f"confusion matrix: {args.confusion}", file=sys.stderr)
        return 0
    k = r["top_k"]
    print(f"clips {r['clips']}, windows {r['windows']}: top-1 {r['top1']:.3f}, top-{k} {r[f'top{k}']:.3f}")
    print(f"{'class':<24} {'precision':>9} {'recall':>7} {'support':>8}")
    for c, m in r["per_class"].items():
        precision, recall = ("-" if v is None else f"{v:.3f}" for v in (m["precision"], m["recall"]))
        print(f"{c:<24} {precision:>9} {recall:>7} {m['support']:>8}")
    print(f"confusion matrix: {args.confusion}")
    return 0


def cmd_export(args) -> int:
    from streamrec.errors import StreamrecError
    from streamrec.offline.evaluate import export

    if args.weights and args.checkpoint and args.weights != args.checkpoint:
        raise StreamrecError(f"--weights: expected one checkpoint, got {args.weights!r} and {args.checkpoint!r}")
    weights = args.weights or args.checkpoint
    if not weights:
        raise StreamrecError("--weights: expected the checkpoint PATH to export, got nothing")
    if str(weights).lower() == "none":  # the export keeps no mark of it: it would be classified as a model
        raise StreamrecError("--weights none: expected trained weights to export (DEFAULT or a checkpoint PATH), "
                             "got random ones: their export would read as a trained model")
    suffix = {"torchscript": ".ts", "onnx": ".onnx"}[args.format]
    out = args.out or str(Path(weights).with_suffix(suffix))  # run.v2/model -> run.v2/model.ts
    if (Path(out).suffix.lower() == ".onnx") != (args.format == "onnx"):  # --weights reads a file as ONNX by its name
        raise StreamrecError(f"--out {out}: expected a name ending in .onnx for --format onnx, and only for it "
                             f"(--weights reads .onnx files as ONNX), got --format {args.format}")
    check_output("--out", out, inputs=(weights,))
    path = export(weights, out, fmt=args.format)
    print(f"wrote {path}")
    return 0


def cmd_quantize(args) -> int:
    from dataclasses import asdict

    from streamrec.offline.dataset import video_files
    from streamrec.errors import StreamrecError
    from streamrec.offline.quantize import check_args, quantize

    clips = video_files(args.clips)  # before the model loads: wrong input fails at once
    check_args(stride=args.stride, min_agreement=args.min_agreement, max_score_diff=args.max_score_diff,
               threads=args.threads)
    from streamrec.runtime import prepared

    loaded = prepared.load(args.model, args.weights, device="cpu")  # the module serve loads: the same digest
    if loaded.prebuilt:
        raise StreamrecError(f"--weights {args.weights}: an exported model; quantize the checkpoint it was exported from")
    report = quantize(loaded, clips, stride=args.stride, min_agreement=args.min_agreement,
                      max_score_diff=args.max_score_diff, threads=args.threads)
    shown = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in asdict(report).items()}  # strict JSON
    print(json.dumps({**shown, "agreement": report.agreement}, indent=1) if args.json else "\n".join(report.lines()))
    if report.saved is None:
        print(f"streamrec: int8 vs fp32 on {report.checked_windows} checked windows: top-1 the same on "
              f"{report.top1_agree} (--min-agreement {args.min_agreement:g}), scores up to {report.max_abs_score_diff:.3g} "
              f"apart (--max-score-diff {args.max_score_diff:g}): not saved", file=sys.stderr)
        return 1
    return 0
