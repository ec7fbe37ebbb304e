"""Command line: ``autoprompt-kit <command> --help``.

Bad input prints one line ``error: …`` and exits with code 2; nothing is written half-way.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from .errors import AutoPromptError


def _parse_words(values: Sequence[str]) -> dict[str, list[str]]:
    """``["negative=terrible,awful", "positive=great"]`` → ``{"negative": [...], "positive": [...]}``."""
    out: dict[str, list[str]] = {}
    for value in values:
        label, sep, words = value.partition("=")
        if not sep or not label.strip() or not words.strip():
            raise AutoPromptError(f"--words {value!r}: expected LABEL=word1,word2")
        out[label.strip()] = [w.strip() for w in words.split(",") if w.strip()]
    return out


def _load_verbalizer_arg(args: argparse.Namespace) -> dict[str, Any]:
    if args.verbalizer:
        path = Path(args.verbalizer)
        text = path.read_text() if path.exists() else args.verbalizer
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AutoPromptError(f"--verbalizer is neither a JSON file nor JSON text: {exc.msg}") from None
        return data.get("verbalizer", data) if isinstance(data, dict) else data
    if args.words:
        return {"label_words": _parse_words(args.words)}
    raise AutoPromptError("give the label words: --words LABEL=word1,word2 (once per class) or --verbalizer JSON")


def cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from .data import load_task
    from .harness import Harness, classification_metrics
    from .prompts import Template, Verbalizer

    template = Template(args.template)
    verbalizer = Verbalizer.from_dict(_load_verbalizer_arg(args))
    task = load_task(args.task, shots=args.shots, seed=args.seed, max_examples=args.max_examples)
    split = task[args.split]
    if not verbalizer.labels:
        verbalizer = verbalizer.replace(label_words=dict(zip(task.label_names, verbalizer.label_words)))
    verbalizer.check_labels(task.label_names)
    template.check_fields(split.fields())
    print(f"task     {task.summary()}")
    print(f"model    {args.model or 'gemma-3-270m (embedded default)'}")
    harness = Harness(args.model, kind=args.kind, batch_size=args.batch_size, progress=not args.quiet)
    print(f"device   {harness.device}  kind {harness.kind}")
    print(f"template {template.display()}")
    print(f"words    {verbalizer.to_dict()['label_words']}")
    modes = ["none", "content_free"] if args.calibration == "both" else [args.calibration]
    # One pass serves both modes: the calibrated run also returns the raw word scores.
    verb = verbalizer.replace(calibration="content_free" if "content_free" in modes else "none")
    result = harness.evaluate(split, template, verb, label_names=task.label_names)
    report: dict[str, Any] = {"task": task.name, "split": args.split, "n": result.n, "template": template.to_dict(),
                              "verbalizer": verbalizer.to_dict(), "model": harness.model_name, "results": {}}
    for mode in modes:
        if mode == "none":
            class_lp = verbalizer.class_logprobs(torch.tensor(result.word_logprobs))
            preds = class_lp.argmax(1).numpy()
            acc, f1 = classification_metrics(result.labels, preds, verbalizer.num_classes)
        else:
            preds, acc, f1 = result.predictions, result.accuracy, result.macro_f1
        rate = (preds[:, None] == range(verbalizer.num_classes)).mean(0)
        share = ", ".join(f"{name} {r:.0%}" for name, r in zip(task.label_names, rate))
        print(f"{args.split:5s} calibration={mode:13s} accuracy {acc:.4f}  macro-F1 {f1:.4f}  (n={result.n}; predicted: {share})")
        report["results"][mode] = {"accuracy": acc, "macro_f1": f1, "predicted_share": rate.tolist()}
    print(f"time     {result.seconds:.1f}s")
    if args.out:
        from .io import write_json_atomic

        write_json_atomic(Path(args.out), report)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoprompt-kit", description="Search for the best prompt for a language model.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__import__('autoprompt_kit').__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("evaluate", help="score a template + verbalizer on a task split",
                        description="Score a template + verbalizer on a task split and print accuracy and macro-F1.")
    ev.add_argument("--task", default="mr", help="built-in task (mr, tweets, amazon, nyt), local file/folder or HF dataset")
    ev.add_argument("--model", default=None, help="HF name or local folder (default: the embedded Gemma 3 270M)")
    ev.add_argument("--kind", choices=["mlm", "seq2seq", "causal"], default=None, help="model kind (detected if omitted)")
    ev.add_argument("--template", default="{text_a} It was {mask}.", help="template text, e.g. '{text_a} It was {mask}.'")
    ev.add_argument("--words", action="append", default=[], metavar="LABEL=W1,W2",
                    help="label words of one class (repeat per class, in label order)")
    ev.add_argument("--verbalizer", default=None, help="verbalizer JSON text or file (a best.json works too)")
    ev.add_argument("--calibration", choices=["none", "content_free", "both"], default="both")
    ev.add_argument("--split", default="test", help="split to score (train, dev, test)")
    ev.add_argument("--shots", type=int, default=None, help="K examples per class for train/dev (few-shot)")
    ev.add_argument("--seed", type=int, default=13)
    ev.add_argument("--max-examples", type=int, default=None, help="cap every split (seeded subsample)")
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--out", default=None, help="write the metrics as JSON here")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    # The hub client logs every retry when offline; our own error message says what failed.
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except AutoPromptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
