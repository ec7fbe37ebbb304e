"""Command line: ``autoprompt-kit <command> --help``.

Bad input prints one line ``error: …`` and exits with code 2; nothing is written half-way.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from .errors import AutoPromptError
from .search.api import DEFAULT_SHOTS
from .search.processes import STORAGE_ENV
from .search.processes import child_env as _child_env
from .search.processes import die_with_parent as _die_with_parent
from .search.processes import forward_signals as _forward_signals
from .search.processes import quiet_logging as _quiet_logging
from .search.processes import run_command as _run_command


def _parse_words(values: Sequence[str]) -> dict[str, list[str]]:
    """``["negative=terrible,awful", "positive=great"]`` → ``{"negative": [...], "positive": [...]}``."""
    out: dict[str, list[str]] = {}
    for value in values:
        label, sep, words = value.partition("=")
        if not sep or not label.strip() or not words.strip():
            raise AutoPromptError(f"--words {value!r}: expected LABEL=word1,word2")
        out[label.strip()] = [w.strip() for w in words.split(",") if w.strip()]
        twice = sorted({w for w in out[label.strip()] if out[label.strip()].count(w) > 1})
        if twice:
            raise AutoPromptError(f"--words {value!r}: label word {twice[0]!r} is given twice")
    return out


def _load_verbalizer_arg(args: argparse.Namespace) -> dict[str, Any]:
    from .io import load_json, loads_json

    if args.verbalizer:
        path = Path(args.verbalizer)
        try:
            is_file = path.exists()
        except OSError:  # JSON text too long to be a file name
            is_file = False
        if is_file:
            data = load_json(path, "--verbalizer file")
        else:
            try:
                data = loads_json(args.verbalizer, "--verbalizer")
            except json.JSONDecodeError as exc:
                raise AutoPromptError(f"--verbalizer is neither a JSON file nor JSON text: {exc.msg}") from None
        return data.get("verbalizer", data) if isinstance(data, dict) else data
    if args.words:
        return {"label_words": _parse_words(args.words)}
    raise AutoPromptError("give the label words: --words LABEL=word1,word2 (once per class) or --verbalizer JSON")


def cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from .data import load_task
    from .harness import classification_metrics
    from .prompts import Template, Verbalizer

    _check_seed(args.seed)
    if args.out:
        _check_writable("--out", args.out, "metrics.json")
    if args.prompt:
        return _evaluate_prompt(args)
    template = Template(args.template)
    raw = _load_verbalizer_arg(args)
    try:
        if isinstance(raw, dict):  # {"label_words": …, …} or a plain {label: words}
            verbalizer = Verbalizer.from_dict(raw if "label_words" in raw else {"label_words": raw})
        else:
            verbalizer = Verbalizer.from_words(raw)
    except AutoPromptError as exc:
        raise AutoPromptError(f"{'--verbalizer' if args.verbalizer else '--words'}: {exc}") from None
    args.task = args.task or "mr"
    args.seed = 13 if args.seed is None else args.seed
    args.calibration = args.calibration or "both"
    task = load_task(args.task, shots=args.shots, seed=args.seed, max_examples=args.max_examples, shots_flag="--shots")
    split = task[args.split]
    if not verbalizer.labels:
        verbalizer = verbalizer.replace(label_words=dict(zip(task.label_names, verbalizer.label_words)))
    verbalizer.check_labels(task.label_names)
    template.check_fields(split.fields())
    print(f"task     {task.summary()}")
    print(f"model    {args.model or 'gemma-3-270m (embedded default)'}")
    harness = _harness(args, progress=not args.quiet, auto_int8=True)
    print(f"device   {harness.device} ({harness.precision})  kind {harness.kind}")
    print(f"template {template.display()}")
    print(f"words    {verbalizer.to_dict()['label_words']}")
    modes = ["none", "content_free"] if args.calibration == "both" else [args.calibration]
    # One pass serves both modes: the calibrated run also returns the raw word scores.
    verb = verbalizer.replace(
        calibration="content_free" if "content_free" in modes else "contextual" if "contextual" in modes else "none"
    )
    result = harness.evaluate(split, template, verb, label_names=task.label_names, checked=True)  # checked above
    report: dict[str, Any] = {
        "task": task.name,
        "split": args.split,
        "n": result.n,
        "template": template.to_dict(),
        "verbalizer": verbalizer.to_dict(),
        "model": harness.model_name,
        "results": {},
    }
    for mode in modes:
        if mode == "none":
            class_lp = verbalizer.class_logprobs(torch.tensor(result.word_logprobs))
            preds = class_lp.argmax(1).numpy()
            acc, f1 = classification_metrics(result.labels, preds, verbalizer.num_classes)
        else:
            preds, acc, f1 = result.predictions, result.accuracy, result.macro_f1
        rate = (preds[:, None] == range(verbalizer.num_classes)).mean(0)
        share = ", ".join(f"{name} {r:.0%}" for name, r in zip(task.label_names, rate))
        print(
            f"{args.split:5s} calibration={mode:13s} accuracy {acc:.4f}  macro-F1 {f1:.4f}  "
            f"(n={result.n}; predicted: {share})"
        )
        report["results"][mode] = {"accuracy": acc, "macro_f1": f1, "predicted_share": rate.tolist()}
    print(f"time     {result.seconds:.1f}s")
    if args.out:
        from .io import write_json_atomic

        write_json_atomic(Path(args.out), report)
    return 0


def _add_harness_args(parser: argparse.ArgumentParser) -> None:
    """The options that shape the harness (batch, device, precision), shared by evaluate and search."""
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu, … (default: CUDA when available)")
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "int8"],
        default="auto",
        help="auto (default: bf16 on CUDA; on a CPU the fastest of fp32 / bf16 / int8 whose "
        "predictions agree with fp32's on a short probe, printed at start-up), fp32, bf16 "
        "(autocast) or int8 (dynamic quantisation of the linear layers; CPU, scoring only); "
        "a saved prompt is re-scored in the precision it was found in",
    )
    parser.add_argument(
        "--truncation",
        choices=["tail", "head"],
        default="tail",
        help="which end of an over-long text is cut to fit the model (default tail)",
    )


def _harness(args: argparse.Namespace, progress: bool, auto_int8: bool = False) -> Any:
    """The harness that ``--model/--kind`` and :func:`_add_harness_args`'s options ask for.
    ``auto_int8``: ``--precision auto`` may pick int8 (scoring only: nothing trains or takes gradients)."""
    from .harness import Harness

    return Harness(args.model, kind=args.kind, progress=progress, auto_int8=auto_int8, **_harness_options(args))


def _saved_precision(args: argparse.Namespace, prompt: Any) -> str | None:
    """``--precision auto`` re-scores a saved prompt in the precision it was found in (dev reproduces
    exactly; an older prompt that records none, in the default of its time); an explicit
    ``--precision`` wins."""
    if args.precision in (None, "auto"):
        # A prompt saved before precisions were recorded was scored in the default of its time
        # (fp32 on a CPU, bf16 on CUDA): None asks for that default again.
        return str(prompt.model["precision"]) if prompt.model.get("precision") else None
    return args.precision


def _load_prompt(path: str, allow_model_mismatch: bool = False) -> Any:
    """A best.json, a prompt folder, or a Hub repo ``user/name`` (downloaded into the Hub cache)."""
    from .artifact import Prompt

    return Prompt.from_pretrained(path, allow_model_mismatch=allow_model_mismatch)


def _evaluate_prompt(args: argparse.Namespace) -> int:
    """Re-score a saved prompt (any method, trained state included) and compare with its record."""
    from .data import load_task

    prompt = _load_prompt(args.prompt, args.allow_model_mismatch)
    info = prompt.provenance.get("task") or {}
    task = load_task(
        args.task or info.get("source") or info.get("name") or "mr",
        shots=args.shots if args.shots is not None else info.get("shots") or None,
        seed=args.seed if args.seed is not None else info.get("seed", 13),
        max_examples=args.max_examples if args.max_examples is not None else info.get("max_examples"),
        shots_flag="--shots",
    )
    if args.split not in task.splits:
        raise AutoPromptError(
            f"--split {args.split!r} is not a split of {task.name!r} (splits: {', '.join(task.splits)})"
        )
    if args.calibration and args.calibration != "both":
        prompt.verbalizer = prompt.verbalizer.replace(calibration=args.calibration)
    if args.model or args.kind:
        prompt.model = {
            **prompt.model,
            **({"name": args.model} if args.model else {}),
            **({"kind": args.kind} if args.kind else {}),
        }
    split = task[args.split]
    print(f"task     {task.summary()}")
    print(f"prompt   {prompt.describe()}")
    # The prompt loads its model itself, so the saved pin is checked (--model included), in the
    # precision it was found in unless --precision says otherwise.
    harness = prompt.harness(
        progress=not args.quiet, **{**_harness_options(args), "precision": _saved_precision(args, prompt)}
    )
    result = prompt.evaluate(split, harness)
    cal = prompt.verbalizer.calibration
    print(
        f"{args.split:5s} calibration={cal:13s} accuracy {result.accuracy:.4f}  macro-F1 {result.macro_f1:.4f}  "
        f"(n={result.n})"
    )
    before = (prompt.provenance.get("metrics") or {}).get(args.split)
    if before:
        print(
            f"saved    {args.split} accuracy {before['accuracy']:.4f} (n={before.get('n')}) "
            f"-> now {result.accuracy:.4f}"
        )
        saved_preds = before.get("predictions")
        if saved_preds is not None and before.get("fingerprint") == split.fingerprint:
            same = int(sum(int(a) == int(b) for a, b in zip(saved_preds, result.predictions)))
            print(f"         {same}/{len(saved_preds)} {args.split} predictions identical to the search's")
    if args.out:
        from .io import write_json_atomic

        write_json_atomic(
            Path(args.out),
            {
                "task": task.name,
                "split": args.split,
                "n": result.n,
                "prompt": prompt.describe(),
                "results": {cal: result.metrics()},
            },
        )
    return 0


def _load_cli_task(args: argparse.Namespace) -> Any:
    """The task ``--task`` names with ``--shots`` (default :data:`DEFAULT_SHOTS`, lowered to fit a small
    file, and said so); ``args.shots`` is set to the K used. Errors name the CLI flags."""
    from .search.api import load_search_task

    task, args.shots = load_search_task(args.task, args.shots, args.seed, args.max_examples, note=True)
    return task


#: Seeds go to numpy and torch, which take 32-bit unsigned values.
MAX_SEED = 2**32 - 1


def _check_seed(seed: int | None, flag: str = "--seed") -> None:
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise AutoPromptError(f"{flag} must be a non-negative integer up to {MAX_SEED}, got {seed}")


def _check_writable(flag: str, out: str, example: str = "best.json") -> Path:
    """A file ``flag`` names must be one we can create: not a folder, its nearest existing ancestor a
    writable folder (missing folders are created at the end); checked before any work is done."""
    from .io import writable_target

    path = Path(out)
    writable_target(path, f"{flag} {out!r}", f"give a file name such as {str(path / example)!r}")
    return path


def _search_command(args: argparse.Namespace, study_name: str) -> str:
    """The command that reproduces (or resumes) this search, for the study's note: the same method,
    task, space, model, seed and selection; the storage without its password."""
    import shlex

    from .search import public_url
    from .search.api import task_source

    argv = [
        "autoprompt-kit",
        "search",
        args.method,
        "--task",
        task_source(str(args.task)),
        "--shots",
        str(args.shots),
        "--seed",
        str(args.seed),
        "--study",
        study_name,
        "--trials",
        str(args.trials),
    ]
    for flag, value in (
        ("--space", args.space),
        ("--model", args.model),
        ("--kind", args.kind),
        ("--max-examples", args.max_examples),
        ("--selection", args.selection),
        ("--budget", args.budget),
        ("--storage", public_url(args.storage) if args.storage else None),
    ):
        if value is not None:
            argv += [flag, str(value)]
    if args.selection == "cv" and args.folds != 4:
        argv += ["--folds", str(args.folds)]
    return shlex.join(argv)


def cmd_search(args: argparse.Namespace) -> int:
    """``find_prompt`` with the command line's settings; prints what it found."""
    from .search import get_searcher
    from .search.api import find_prompt

    _check_seed(args.seed)
    searcher_cls = get_searcher(args.method)

    def command(study_name: str, task_info: dict[str, Any]) -> str:
        # With the K used: the default is lowered to fit a small file.
        return _search_command(argparse.Namespace(**{**vars(args), "shots": task_info.get("shots")}), study_name)

    result = find_prompt(
        args.method,
        args.task,
        args.space or None,
        trials=args.trials,
        storage=args.storage,
        study=args.study,
        seed=args.seed,
        test_split=args.test_split or None,
        out=args.out or None,
        budget=args.budget,
        selection=args.selection,
        folds=args.folds,
        progress=not args.quiet,
        trial_dir=args.trial_dir,
        shots=args.shots,
        max_examples=args.max_examples,
        model=args.model,
        kind=args.kind,
        harness_options={**_harness_options(args), "auto_int8": searcher_cls.scores_only},
        heartbeat=args.heartbeat,
        workers=args.workers,
        verbose=True,
        command=command,
    )
    print(result.summary(args.out))
    return 0


def _task_space(method: str, searcher_cls: Any, task: Any) -> Any:
    from .search.api import default_space

    return default_space(method, task)


def cmd_space(args: argparse.Namespace) -> int:
    """Write the default search space of a method for a task, as YAML to edit and pass to --space."""
    from .search import get_searcher

    searcher_cls = get_searcher(args.method)
    _check_seed(args.seed)
    if args.out:
        _check_writable("--out", args.out, "space.yaml")
    task = _load_cli_task(args)
    config = _task_space(args.method, searcher_cls, task)
    text = config.to_yaml(
        f"{args.method} search space for task {task.name} ({len(task.label_names)} classes: "
        f"{', '.join(task.label_names)}), built from the task by autoprompt-kit "
        f"{__import__('autoprompt_kit').__version__}.\nEdit it and run: autoprompt-kit search "
        f"{args.method} --task {args.task} --space THIS_FILE"
    )
    if args.out:
        from .io import write_text_atomic

        write_text_atomic(Path(args.out), text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Apply a saved prompt to new texts: JSONL (or CSV) out, in input order, written atomically."""
    import csv
    import itertools
    import os
    import tempfile
    import time

    from tqdm import tqdm

    from .artifact import PROBABILITY_DECIMALS
    from .data import Split
    from .data.stream import input_format, open_input, read_chunks
    from .io import current_umask

    if args.chunk_size < 1:
        raise AutoPromptError(f"--chunk-size must be at least 1, got {args.chunk_size}")
    if args.out:
        _check_writable("--out", args.out, "predictions.jsonl")
    prompt = _load_prompt(args.prompt, args.allow_model_mismatch)
    if args.model:  # the model's place on this machine; its pin is still checked
        prompt.model = {**prompt.model, "name": args.model}
    fmt = input_format(args.input, args.input_format)
    source = "stdin" if args.input == "-" else args.input
    stream = open_input(args.input)
    chunks = read_chunks(stream, fmt, source, args.chunk_size)
    first = next(chunks, [])  # read and checked before the model loads
    needed = {f for t in prompt.templates for f in t.fields}
    if first:
        missing = sorted(needed - first[0].example.field_names())
        if missing:
            raise AutoPromptError(
                f"the prompt's template reads {', '.join(missing)}, which {source} does not have "
                f"(its fields: {', '.join(sorted(first[0].example.field_names()))})"
            )
    names = prompt.class_names()
    has_id = bool(first) and first[0].id is not None
    has_b = bool(first) and first[0].example.text_b is not None
    has_line = fmt == "lines"  # plain text has no id column: the line number joins results back
    out_dir = Path(args.out).resolve().parent if args.out else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{Path(args.out).name}.", suffix=".tmp", dir=out_dir)
        sink: TextIO = os.fdopen(fd, "w", encoding="utf-8", newline="")
    else:
        tmp, sink = None, sys.stdout
    start, done, bar = time.perf_counter(), 0, None
    try:
        harness = (
            prompt.harness(**{**_harness_options(args), "precision": _saved_precision(args, prompt)}) if first else None
        )
        # After the model loads (a model that fails is one error line, no bar); on stderr, so it
        # shows when the rows go to stdout too.
        bar = tqdm(
            desc="predict",
            unit=" texts",
            total=_count_inputs(args.input, fmt),
            disable=args.quiet,
            file=sys.stderr,
            leave=False,
        )
        writer = None
        if args.format == "csv":
            writer = csv.writer(sink)
            writer.writerow(
                (["id"] if has_id else [])
                + (["line"] if has_line else [])
                + ["text"]
                + (["text_b"] if has_b else [])
                + ["label"]
                + [f"p_{n}" for n in names]
            )
        for chunk in itertools.chain([first] if first else [], chunks):
            assert harness is not None  # loaded when there was a first chunk
            preds = prompt.predict(Split([r.example for r in chunk], name="inputs"), harness)
            harness.clear_cache()
            for row, record in zip(chunk, preds.records(PROBABILITY_DECIMALS)):
                ex = row.example
                if writer is not None:
                    writer.writerow(
                        ([row.id] if has_id else [])
                        + ([row.line] if has_line else [])
                        + [ex.text_a]
                        + ([ex.text_b] if has_b else [])
                        + [record["label"]]
                        + [f"{p:.{PROBABILITY_DECIMALS}f}" for p in record["probabilities"].values()]
                    )
                else:
                    obj = (
                        ({"id": row.id} if has_id else {})
                        | ({"line": row.line} if has_line else {})
                        | {"text": ex.text_a}
                        | ({"text_b": ex.text_b} if ex.text_b is not None else {})
                        | record
                    )
                    sink.write(json.dumps(obj, ensure_ascii=False) + "\n")
            done += len(chunk)
            bar.update(len(chunk))
        if tmp is not None:
            sink.close()
            os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; a result file is 0644
            os.replace(tmp, args.out)
    except BaseException:
        if tmp is not None:
            sink.close()
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise
    finally:
        if bar is not None:
            bar.close()
        stream.close()
    if not args.quiet:
        seconds = time.perf_counter() - start
        print(
            f"predicted {done} texts in {seconds:.1f}s ({done / max(seconds, 1e-9):.1f} texts/s) -> "
            f"{args.out or 'stdout'}",
            file=sys.stderr,
        )
    return 0


def _count_inputs(path: str, fmt: str) -> int | None:
    """How many inputs a plain-text or JSONL file holds (non-blank lines), for the bar's time
    estimate; None for stdin and CSV (quoted fields may span lines)."""
    if path == "-" or fmt not in ("lines", "jsonl"):
        return None
    try:
        with open(path, "rb") as fh:
            return sum(1 for line in fh if line.strip())
    except OSError:
        return None


def _harness_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "batch_size": args.batch_size,
        "device": args.device,
        "precision": args.precision,
        "truncation": args.truncation,
    }


def cmd_delta(args: argparse.Namespace) -> int:
    """Show a saved delta's structure (which layers/positions are on), or export it to PEFT."""
    from .delta.structure import WEIGHTS_FILE, read_structure, structure_table

    doc = read_structure(args.path)
    if args.peft:
        from .delta import Delta
        from .harness import Harness

        harness = Harness(args.model or doc.get("model"), kind=args.kind, progress=False)
        out = Delta.load(args.path, harness).export_peft(args.peft, harness, base_model=args.model)
        print(f"wrote a PEFT LoRA adapter to {out} (load with peft.PeftModel.from_pretrained)")
        return 0
    import math

    from safetensors import SafetensorError, safe_open

    sizes = [0] * len(doc["modules"])
    weights = (Path(args.path) if Path(args.path).is_dir() else Path(args.path).parent) / WEIGHTS_FILE
    if not weights.is_file():
        raise AutoPromptError(f"the delta's weights file {str(weights)!r} is missing")
    try:
        with safe_open(str(weights), "pt") as fh:
            for key in fh.keys():
                parts = key.split(".")  # "deltas.<i>.<parameter>"
                if len(parts) < 3 or parts[0] != "deltas" or not parts[1].isdigit() or int(parts[1]) >= len(sizes):
                    raise AutoPromptError(
                        f"{str(weights)!r} holds {key[:80]!r}, not a weight of this delta's "
                        f"{len(sizes)} modules (expected deltas.<i>.<parameter>)"
                    )
                sizes[int(parts[1])] += math.prod(fh.get_slice(key).get_shape())
    except (SafetensorError, OSError) as exc:
        raise AutoPromptError(
            f"cannot read the delta's weights {str(weights)!r}: {' '.join(str(exc).split())[:200]}"
        ) from None
    print(structure_table(doc["modules"], sizes, doc.get("backbone_parameters")))
    return 0


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Rows as aligned columns under named headers (``right``: columns aligned right)."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


def _storage_shown(url: str | None) -> str:
    from .search import DEFAULT_STORAGE, public_url

    return public_url(url or DEFAULT_STORAGE)


def cmd_studies(args: argparse.Namespace) -> int:
    from .search import storage_summaries

    rows = storage_summaries(args.storage)
    if not rows:
        print("no studies" + (f" (no storage at {_storage_shown(args.storage)})" if rows is None else ""))
        return 0
    table = []
    for r in rows:
        states = r["states"]
        count = f"{states.get('complete', 0)}" + "".join(
            f" +{states[s]} {s}" for s in ("running", "waiting", "pruned", "fail") if states.get(s)
        )
        best = "-" if r["best"] is None else f"{r['best']:.4f} {r['metric'] or ''} (#{r['best_trial']})".rstrip()
        table.append([r["name"], str(r["method"] or "-"), str(r["task"] or "-"), str(r["model"] or "-"), count, best])
    print(_table(["study", "method", "task", "model", "trials", "best"], table))
    return 0


def cmd_trials(args: argparse.Namespace) -> int:
    import optuna

    from .search import open_existing_storage, recover_for_view, trial_rows

    if args.top is not None and args.top < 1:
        raise AutoPromptError(f"--top must be at least 1, got {args.top}")
    storage = open_existing_storage(args.storage)
    if storage is None:
        raise AutoPromptError(f"no storage at {_storage_shown(args.storage)}: run a search first, or give --storage")
    names = optuna.get_all_study_names(storage)
    if args.study not in names:
        raise AutoPromptError(
            f"no study named {args.study!r} in {_storage_shown(args.storage)} (studies: {', '.join(names) or 'none'})"
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=args.study, storage=storage)
    recover_for_view(study)
    rows = trial_rows(study)
    if args.sort == "value":  # best first; unfinished trials (no value) last, by number
        rows.sort(key=lambda r: (r["value"] is None, -(r["value"] or 0.0), r["number"]))
    if args.top is not None:
        rows = rows[: args.top]
    if args.json:
        print(json.dumps(rows, indent=1, ensure_ascii=False))
        return 0
    metric = (study.metric_names or ["value"])[0]
    table = [
        [
            str(r["number"]),
            r["state"],
            "-" if r["value"] is None else f"{r['value']:.4f}",
            "-" if r["seconds"] is None else f"{r['seconds']:.1f}",
            " · ".join(f"{k}={v}" for k, v in r["params"].items()) or r.get("note", ""),
        ]
        for r in rows
    ]
    print(_table(["#", "state", metric, "seconds", "parameters"], table, right=(0, 2, 3)))
    return 0


#: Hosts that serve only this machine; any other --host serves every study to the network.
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")

#: The dashboard's server, run in a child that reads the storage URL from the environment.
_DASHBOARD_CODE = (
    "import os, sys; from optuna_dashboard import run_server; "
    "from optuna.artifacts import FileSystemArtifactStore; "
    f"run_server(os.environ.pop({STORAGE_ENV!r}), host=sys.argv[1], port=int(sys.argv[2]), "
    "artifact_store=FileSystemArtifactStore(sys.argv[3]))"
)


def cmd_dashboard(args: argparse.Namespace) -> int:
    import importlib.util
    import subprocess

    import optuna

    from .search import DEFAULT_STORAGE, default_storage, open_storage, public_url, recover_for_view
    from .search.report import artifact_dir

    if not 0 < args.port < 65536:
        raise AutoPromptError(f"--port must be between 1 and 65535, got {args.port}")
    if args.host not in _LOCAL_HOSTS and not args.public:
        raise AutoPromptError(
            f"--host {args.host} would serve every study in the storage to the network, "
            "without a password; add --public if that is what you want"
        )
    url = args.storage or default_storage()
    storage = open_storage(url)  # fails early and clearly on a bad URL
    if importlib.util.find_spec("optuna_dashboard") is None:
        raise AutoPromptError("optuna-dashboard is not installed: pip install optuna-dashboard")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in optuna.get_all_study_names(storage):  # trials of dead processes show as failed, not running
        recover_for_view(optuna.load_study(study_name=name, storage=storage))
    artifacts = artifact_dir(args.storage or DEFAULT_STORAGE)
    artifacts.mkdir(parents=True, exist_ok=True)
    if args.host not in _LOCAL_HOSTS:
        print(
            f"warning: serving {public_url(url)} to the network on {args.host}:{args.port} (--public), "
            "with no password",
            file=sys.stderr,
        )
    print(f"optuna-dashboard on http://{args.host}:{args.port}/dashboard  (Ctrl-C to stop; artifacts from {artifacts})")
    import time

    # The storage URL (perhaps with a password) goes through the environment, not the command line.
    proc = subprocess.Popen(
        [sys.executable, "-c", _DASHBOARD_CODE, args.host, str(args.port), str(artifacts)],
        env=_child_env(url),
        preexec_fn=_die_with_parent,
    )
    _forward_signals([proc])
    while proc.poll() is None:  # not proc.wait(): the signal handler must be able to reap the child itself
        time.sleep(0.2)
    return proc.returncode


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoprompt-kit", description="Search for the best prompt for a language model."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__import__('autoprompt_kit').__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    from .search.base import method_names

    methods = ", ".join(method_names())  # the registry's, so a plugin's method is listed too

    ev = sub.add_parser(
        "evaluate",
        help="score a template + verbalizer on a task split",
        description="Score a template + verbalizer on a task split and print accuracy and macro-F1.",
    )
    ev.add_argument(
        "--prompt",
        default=None,
        help="a best.json written by a search, a prompt folder or a Hub repo user/name: re-score its prompt",
    )
    ev.add_argument(
        "--task",
        default=None,
        help="built-in task (mr, tweets, amazon, nyt, fortunes, spam), local file/folder or HF dataset",
    )
    ev.add_argument("--model", default=None, help="HF name or local folder (default: the embedded Gemma 3 270M)")
    ev.add_argument(
        "--kind", choices=["mlm", "seq2seq", "causal"], default=None, help="model kind (detected if omitted)"
    )
    ev.add_argument(
        "--template", default="{text_a} It was {mask}.", help="template text, e.g. '{text_a} It was {mask}.'"
    )
    ev.add_argument(
        "--words",
        action="append",
        default=[],
        metavar="LABEL=W1,W2",
        help="label words of one class (repeat per class, in label order)",
    )
    ev.add_argument("--verbalizer", default=None, help="verbalizer JSON text or file (a best.json works too)")
    ev.add_argument(
        "--calibration",
        choices=["none", "content_free", "both"],
        default=None,
        help="default: both (or the saved prompt's)",
    )
    ev.add_argument("--split", default="test", help="split to score (train, dev, test)")
    ev.add_argument("--shots", type=int, default=None, help="K examples per class for train/dev (few-shot)")
    ev.add_argument("--seed", type=int, default=None, help="few-shot seed (default 13)")
    ev.add_argument("--max-examples", type=int, default=None, help="cap every split (seeded subsample)")
    _add_harness_args(ev)
    ev.add_argument("--out", default=None, help="write the metrics as JSON here")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.add_argument(
        "--allow-model-mismatch",
        action="store_true",
        help="with --prompt: use a model whose sha256/revision differs from the saved pin (a warning)",
    )
    ev.set_defaults(func=cmd_evaluate)

    se = sub.add_parser(
        "search",
        help="run (or resume) a search study and write the best prompt as JSON",
        description="Run a search method as a resumable Optuna study; write best.json.",
    )
    se.add_argument("method", help=f"search method: {methods}")
    se.add_argument(
        "--space",
        default=None,
        help="search-space YAML (see search_spaces/); default: built from the task (see `space`)",
    )
    se.add_argument("--task", default="mr")
    se.add_argument("--model", default=None, help="HF name or local folder (default: the embedded Gemma 3 270M)")
    se.add_argument("--kind", choices=["mlm", "seq2seq", "causal"], default=None)
    se.add_argument(
        "--shots",
        type=int,
        default=None,
        help=f"K per class for train and dev (default {DEFAULT_SHOTS}, lowered to fit a small file; 0 = full splits)",
    )
    se.add_argument("--seed", type=int, default=13)
    se.add_argument("--max-examples", type=int, default=None, help="cap every split, test included (seeded)")
    se.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite:///runs/autoprompt.db)")
    se.add_argument("--study", default=None, help="study name (same name + storage = resume / join)")
    se.add_argument("--trials", type=int, default=20, help="finished trials the study should hold")
    se.add_argument("--workers", type=int, default=1, help="worker processes sharing the study (use PostgreSQL)")
    se.add_argument(
        "--budget",
        default=None,
        help="time for the trials, e.g. 90s, 10m, 1h (model load and the test pass excluded): no trial "
        "starts once it is spent (auto sizes its stages to it; default 10m for auto, none otherwise)",
    )
    se.add_argument(
        "--selection",
        choices=["dev", "cv"],
        default=None,
        help="score candidates on the dev split, or by k-fold cross-validation over train + dev "
        "(default: cv for auto, dev otherwise)",
    )
    se.add_argument("--folds", type=int, default=4, help="folds of --selection cv (default 4)")
    se.add_argument(
        "--heartbeat",
        type=int,
        default=30,
        help="seconds between trial heartbeats; a trial silent for 2x this is failed and retried",
    )
    se.add_argument("--test-split", default="test", help="split scored with the best prompt at the end ('' = none)")
    se.add_argument(
        "--out",
        default="best.json",
        help="where to write the result (default best.json; the prompt folder best.prompt/ goes beside it)",
    )
    se.add_argument(
        "--trial-dir",
        default=None,
        help="where trials keep what they trained (default: trials/ beside an SQLite storage, else runs/trials)",
    )
    _add_harness_args(se)
    se.add_argument("--quiet", action="store_true")
    se.set_defaults(func=cmd_search)

    sp = sub.add_parser(
        "space",
        help="write a method's default search space for a task (YAML to edit)",
        description="Build a method's search space from a task (label words from the class names, "
        "templates by input shape) and write it as YAML.",
    )
    sp.add_argument("method", help=f"search method ({methods})")
    sp.add_argument("--task", required=True, help="built-in task, local file/folder or HF dataset")
    sp.add_argument(
        "--shots",
        type=int,
        default=None,
        help=f"K per class (default {DEFAULT_SHOTS}, lowered to fit a small file; 0 = full splits)",
    )
    sp.add_argument("--seed", type=int, default=13)
    sp.add_argument("--max-examples", type=int, default=None)
    sp.add_argument("--out", default=None, help="write here (default: stdout)")
    sp.set_defaults(func=cmd_space)

    pr = sub.add_parser(
        "predict",
        help="apply a saved prompt to new texts (JSONL or CSV out)",
        description="Label new texts with a saved prompt: one output row per input, in input order.",
    )
    pr.add_argument("--prompt", required=True, help="a best.json, a saved prompt folder, or a Hub repo user/name")
    pr.add_argument("--input", required=True, help="CSV, TSV, JSONL or plain text lines (- = stdin)")
    pr.add_argument(
        "--input-format",
        choices=["lines", "csv", "tsv", "jsonl"],
        default=None,
        help="default: from the file suffix (plain lines otherwise, and for stdin)",
    )
    pr.add_argument("--out", default=None, help="output file (default: stdout); written atomically")
    pr.add_argument(
        "--format",
        choices=["jsonl", "csv"],
        default="jsonl",
        help="output format (default jsonl); probabilities rounded to 6 decimals in both; plain-text "
        "input gets a 'line' field (its 1-based line number)",
    )
    pr.add_argument("--chunk-size", type=int, default=256, help="texts scored per chunk (memory stays flat)")
    pr.add_argument(
        "--model",
        default=None,
        help="where the prompt's model is on this machine (a moved folder or GGUF file; its sha256 "
        "must match the saved pin)",
    )
    _add_harness_args(pr)
    pr.add_argument("--quiet", action="store_true", help="no progress bar and no summary line (stderr)")
    pr.add_argument(
        "--allow-model-mismatch",
        action="store_true",
        help="use a model whose sha256/revision differs from the prompt's saved pin (a warning)",
    )
    pr.set_defaults(func=cmd_predict)

    de = sub.add_parser(
        "delta",
        help="show a saved delta's structure table, or export it to PEFT",
        description="Print which layers/positions a saved delta switches on; --peft exports LoRA-only deltas.",
    )
    de.add_argument("path", help="folder with delta.json + delta.safetensors")
    de.add_argument("--peft", default=None, metavar="OUT", help="write a PEFT LoRA adapter folder here")
    de.add_argument("--model", default=None, help="the backbone (for --peft; default: the embedded Gemma 3 270M)")
    de.add_argument("--kind", choices=["mlm", "seq2seq", "causal"], default=None)
    de.set_defaults(func=cmd_delta)

    st = sub.add_parser(
        "studies",
        help="list the studies in a storage with their best values",
        description="List the studies in a storage with their best values.",
    )
    st.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite:///runs/autoprompt.db)")
    st.set_defaults(func=cmd_studies)

    tr = sub.add_parser(
        "trials",
        help="list a study's trials: state, score, readable parameters, seconds",
        description="One row per trial of a study: number, state, score, parameters, seconds.",
    )
    tr.add_argument("study", help="study name (see `autoprompt-kit studies`)")
    tr.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite:///runs/autoprompt.db)")
    tr.add_argument(
        "--sort", choices=["value", "number"], default="number", help="best first, or in trial order (default)"
    )
    tr.add_argument("--top", type=int, default=None, help="only the first N rows (after sorting)")
    tr.add_argument("--json", action="store_true", help="the rows as JSON")
    tr.set_defaults(func=cmd_trials)

    da = sub.add_parser(
        "dashboard",
        help="start optuna-dashboard on a storage (localhost)",
        description="Start optuna-dashboard on a storage, listening on localhost.",
    )
    da.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite:///runs/autoprompt.db)")
    da.add_argument("--host", default="127.0.0.1")
    da.add_argument("--port", type=int, default=8080)
    da.add_argument(
        "--public",
        action="store_true",
        help="allow a --host other than localhost (every study is then served to the network)",
    )
    da.set_defaults(func=cmd_dashboard)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_logging()
    parser = build_parser()
    args = parser.parse_args(argv)
    return _run_command(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
