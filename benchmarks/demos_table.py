"""No demonstrations vs random / similar / dev-selected ones, with and without calibration (Gemma 3 270M, MR).

    OMP_NUM_THREADS=1 python benchmarks/demos_table.py                       # every cell, then the table
    OMP_NUM_THREADS=1 python benchmarks/demos_table.py --cells random-1 similar-1   # some cells (resumable)
    python benchmarks/demos_table.py --report                                # the table from finished cells

16-shot train/dev (seed 13), template ``{text_a} It was {mask}.``, terrible / great, the train
reviews as the demonstration pool, test = the fixed 300-review subsample of MR
(``load_task("mr", max_examples=300)``). A cell is one demonstrations setting; it is scored once
with content-free calibration, whose inputs carry each review's demonstrations, and the same pass
gives the uncalibrated scores (the label-word scores before calibration) and the calibration the
harness did before demonstrations were prompt context: content-free inputs with ``"N/A"`` in
place of the demonstrations too (``Harness.class_prior`` on the demonstration template). A
dev-selected set is chosen on the train reviews outside each candidate set, once per calibration.
Test reviews are scored in slices (``--slice-size``); each slice's per-review predictions go to
``--results`` (JSON) as soon as it is done, so a rerun continues where the last one stopped.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from autoprompt_kit import Harness, Prompt, Template, Verbalizer, load_task
from autoprompt_kit.demonstrations import Demonstrations, demonstration_template
from autoprompt_kit.harness.harness import classification_metrics
from autoprompt_kit.methods.demos import select_fixed_demonstrations

TEMPLATE = "{text_a} It was {mask}."
WORDS = {"negative": ["terrible"], "positive": ["great"]}
#: cell → (per_class, selection, order); per_class 0 = no demonstrations
CELLS = {
    "none": (0, None, None),
    "random-1": (1, "random", "balanced"),
    "random-2": (2, "random", "balanced"),
    "similar-1": (1, "similar", "similar_last"),
    "similar-2": (2, "similar", "similar_last"),
    "dev_selected-1": (1, "dev_selected", "balanced"),
    "dev_selected-2": (2, "dev_selected", "balanced"),
}


def fixed_sets(name: str, harness: Harness, task, base: Prompt, seed: int, separator: str, candidates: int) -> dict:
    """dev_selected: the fixed set chosen for each calibration (on train reviews outside each set)."""
    per_class, _, order = CELLS[name]
    out = {}
    for cal in ("none", "content_free"):
        prompt = Prompt(base.templates, base.verbalizer.replace(calibration=cal), label_names=task.label_names)
        demos, ranked = select_fixed_demonstrations(harness, prompt, task.train, task.label_names, per_class,
                                                    order=order, separator=separator, seed=seed, candidates=candidates)
        out[cal] = {"fixed": demos.fixed, "candidates": ranked,
                    "dev_accuracy": prompt.with_demonstrations(demos).evaluate(task.dev, harness).accuracy}
    return out


def run_slice(name: str, cell: dict, harness: Harness, task, test, seed: int, separator: str) -> dict:
    """Per-review predictions of one cell on one slice of the test reviews: uncalibrated,
    calibrated with the demonstrations, calibrated with "N/A" in their place."""
    per_class, selection, order = CELLS[name]
    verbalizer = Verbalizer.from_words(WORDS, calibration="content_free")
    base = Prompt([Template(TEMPLATE)], verbalizer, label_names=task.label_names)

    def with_demos(cal: str) -> Prompt:
        if not per_class:
            return base
        if selection == "dev_selected":
            demos = Demonstrations(task.train, task.label_names, per_class, "fixed", order, separator, seed,
                                   fixed=cell["fixed"][cal]["fixed"])
        else:
            demos = Demonstrations(task.train, task.label_names, per_class, selection, order, separator, seed)
        return base.with_demonstrations(demos)

    out: dict = {}
    for cal in (("none", "content_free") if selection == "dev_selected" else ("content_free",)):
        prompt = replace(with_demos(cal), verbalizer=verbalizer.replace(calibration=cal))
        result = prompt.evaluate(test, harness)
        word_lp = torch.as_tensor(result.word_logprobs)
        if cal == "none":
            out["none"] = result.predictions.tolist()
            continue
        out["content_free"] = result.predictions.tolist()
        out["prior"] = np.asarray(result.prior).reshape(-1, 2).mean(0).tolist()
        if selection != "dev_selected":  # the uncalibrated word scores come with the calibrated pass
            out["none"] = verbalizer.class_logprobs(word_lp).argmax(1).tolist()
        if prompt.demonstrations is not None:
            template = demonstration_template(prompt.template, harness.kind)
            old_prior = harness.class_prior(template, verbalizer)  # "N/A" as the demonstrations too
            out["content_free_without_demos"] = verbalizer.class_logprobs(word_lp, old_prior).argmax(1).tolist()
    return out


def slices(n: int, size: int) -> list[str]:
    return [f"{lo}:{min(lo + size, n)}" for lo in range(0, n, size)]


def summarise(cell: dict, labels: np.ndarray, n: int, size: int) -> dict | None:
    """Accuracies over the whole test subsample, once every slice of the cell is done."""
    keys = slices(n, size)
    if not all(k in cell.get("slices", {}) for k in keys):
        return None
    out = {}
    for what in ("none", "content_free", "content_free_without_demos"):
        if what in cell["slices"][keys[0]]:
            preds = np.concatenate([cell["slices"][k][what] for k in keys])
            out[what] = classification_metrics(labels, preds, 2)[0]
    out["positive_rate"] = {w: float(np.mean(np.concatenate([cell["slices"][k][w] for k in keys])))
                            for w in ("none", "content_free", "content_free_without_demos") if w in out}
    out["minutes"] = sum(cell["seconds"].values()) / 60
    return out


def report(results: dict, labels: np.ndarray, n: int, size: int) -> str:
    lines = ["| demonstrations | uncalibrated | content-free, inputs carry the demos | content-free, `N/A` in place "
             "of the demos | predicted positive (in the same order) | wall time |", "|---|---:|---:|---:|---:|---:|"]
    for name in CELLS:
        r = summarise(results.get(name, {}), labels, n, size)
        if r is None:
            continue
        old = r.get("content_free_without_demos")
        rates = " / ".join(f"{v:.0%}" for v in r["positive_rate"].values())
        lines.append(f"| {name} | {r['none']:.3f} | {r['content_free']:.3f} | {'—' if old is None else f'{old:.3f}'} "
                     f"| {rates} | {r['minutes']:.1f} min |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="*", default=list(CELLS), choices=list(CELLS))
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--test-examples", type=int, default=300)
    parser.add_argument("--slice-size", type=int, default=100, help="test reviews per resumable unit")
    parser.add_argument("--max-slices", type=int, default=None,
                        help="stop after this many slices (a dev_selected set choice counts as one): short runs")
    parser.add_argument("--separator", default=" ")
    parser.add_argument("--candidates", type=int, default=8, help="dev_selected: random fixed sets compared")
    parser.add_argument("--results", default="runs/demos_table.json")
    parser.add_argument("--report", action="store_true", help="print the table from the finished cells only")
    args = parser.parse_args()
    path = Path(args.results)
    results = json.loads(path.read_text()) if path.exists() else {}
    task = load_task("mr", shots=16, seed=args.seed, max_examples=args.test_examples)  # caps test only
    test = task.test

    def save() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1))

    if not args.report:
        harness = Harness(progress=False)
        done = 0

        def budget_left() -> bool:
            return args.max_slices is None or done < args.max_slices

        for name in args.cells:
            cell = results.setdefault(name, {"slices": {}, "seconds": {}})
            if CELLS[name][1] == "dev_selected" and "fixed" not in cell and budget_left():
                start = time.perf_counter()
                base = Prompt([Template(TEMPLATE)], Verbalizer.from_words(WORDS), label_names=task.label_names)
                cell["fixed"] = fixed_sets(name, harness, task, base, args.seed, args.separator, args.candidates)
                cell["seconds"]["fixed"] = round(time.perf_counter() - start, 1)
                done += 1  # costs about a slice
                save()
            for key in slices(len(test), args.slice_size):
                waiting = CELLS[name][1] == "dev_selected" and "fixed" not in cell
                if key in cell["slices"] or waiting or not budget_left():
                    continue
                lo, hi = map(int, key.split(":"))
                start = time.perf_counter()
                cell["slices"][key] = run_slice(name, cell, harness, task, test[lo:hi], args.seed, args.separator)
                cell["seconds"][key] = round(time.perf_counter() - start, 1)
                done += 1
                print(f"{name} {key}: {cell['seconds'][key]} s", flush=True)
                save()
    print(report(results, test.labels, len(test), args.slice_size))


if __name__ == "__main__":
    main()
