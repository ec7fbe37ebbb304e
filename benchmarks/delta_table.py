"""Accuracy vs trainable-parameter fraction on MR: full fine-tuning, single delta modules, S3Delta.

Gemma 3 270M (the embedded default), prompt-based fine-tuning through ``Harness.train`` with
``{text_a} It was {mask}.`` and terrible/great. Few-shot train/dev (16 per class, seeds 13/21/42);
every row is scored on one fixed seeded test subsample. Resumable: each finished (method, seed)
is a line in the JSONL; a rerun skips it. ``--report`` prints the table (mean ± sd over seeds).

    OMP_NUM_THREADS=1 python benchmarks/delta_table.py --out runs/delta_table.jsonl
    python benchmarks/delta_table.py --out runs/delta_table.jsonl --report
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

TEMPLATE = "{text_a} It was {mask}."
WORDS = {"negative": ["terrible"], "positive": ["great"]}
SEEDS = (13, 21, 42)

# name → (kind, spec options) of each single-module row; S3Delta rows are "s3delta@<budget %>".
SINGLE: dict[str, list[dict[str, Any]]] = {
    "lora-v r=1": [{"kind": "lora", "targets": ["v_proj"], "r": 1}],
    "lora-qv r=1": [{"kind": "lora", "targets": ["q_proj", "v_proj"], "r": 1}],
    "adapter-ffn b=2": [{"kind": "adapter", "targets": ["mlp.down_proj"], "bottleneck": 2}],
    "bitfit": [{"kind": "bitfit", "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                               "down_proj"]}],
    "ln": [{"kind": "ln", "targets": [r".*norm"]}],
    "prefix p=5": [{"kind": "prefix", "num_tokens": 5}],
}
#: S3Delta variants in the order a tie on dev goes to (the default first).
VARIANTS = ("s3delta", "s3delta-cost", "s3delta-noadapter")


METHODS = ["zero-shot", "full-ft", *SINGLE, "s3delta@0.006", "s3delta-cost@0.006", "s3delta@0.02", "s3delta-cost@0.02",
           "s3delta-noadapter@0.02", "s3delta@0.046", "s3delta-noadapter@0.046"]


def run_row(method: str, seed: int, harness: Any, test: Any, args: argparse.Namespace) -> dict[str, Any]:
    from autoprompt_kit import load_task
    from autoprompt_kit.delta import Delta, DeltaSpec, count_parameters

    task = load_task("mr", shots=args.shots, seed=seed)
    backbone = count_parameters(harness.model)
    start = time.perf_counter()
    row: dict[str, Any] = {"method": method, "seed": seed, "backbone_params": backbone}
    if method == "zero-shot":
        res = harness.evaluate(test, TEMPLATE, {"label_words": WORDS, "calibration": "none"})
        cal = harness.evaluate(test, TEMPLATE, {"label_words": WORDS, "calibration": "content_free"})
        row.update(trainable=0, test=res.accuracy, test_calibrated=cal.accuracy, dev=None)
    elif method == "full-ft":
        state = {k: v.detach().clone() for k, v in harness.model.state_dict().items()}
        try:
            params = list(harness.model.parameters())
            for p in params:
                p.requires_grad_(True)
            losses = harness.train(task.train, TEMPLATE, WORDS, params, epochs=args.full_epochs, lr=args.full_lr,
                                   batch_size=args.batch_size, seed=seed)
            dev = harness.evaluate(task.dev, TEMPLATE, WORDS)
            res = harness.evaluate(test, TEMPLATE, WORDS)
            row.update(trainable=backbone, test=res.accuracy, dev=dev.accuracy, losses=losses)
        finally:
            harness.model.load_state_dict(state)
            for p in harness.model.parameters():
                p.requires_grad_(False)
    else:
        torch.manual_seed(seed)
        if method.split("@")[0] in VARIANTS:
            from autoprompt_kit.methods.s3delta import S3DeltaConfig, s3delta_search

            # "s3delta@0.02" (size-blind gates), "s3delta-cost@0.02" (gate gradients per parameter),
            # "s3delta-noadapter@0.02" (LoRA + LN space only)
            budget = float(method.split("@")[1])
            config = S3DeltaConfig(budget_percent=budget, warmup_epochs=args.warmup_epochs,
                                   search_epochs=args.search_epochs, epochs=args.epochs, lr=args.lr,
                                   gate_lr=[args.gate_lr], batch_size=args.batch_size,
                                   gate_cost=["per_parameter" if method.startswith("s3delta-cost@") else "none"],
                                   **({"adapter_targets": []} if method.startswith("s3delta-noadapter@") else {}))
            found = s3delta_search(harness, task.train, task.dev, TEMPLATE, WORDS, config, seed=seed)
            row["search_seconds"] = round(found.seconds, 1)
            row["structure_table"] = found.table
            torch.manual_seed(seed)
            delta = Delta.from_structure(harness, found.structure)
        else:
            delta = Delta.from_specs(harness, [DeltaSpec(**s) for s in SINGLE[method]])
        delta.attach(harness)
        try:
            losses = harness.train(task.train, TEMPLATE, WORDS, delta.parameters(), epochs=args.epochs, lr=args.lr,
                                   batch_size=args.batch_size, seed=seed)
            dev = harness.evaluate(task.dev, TEMPLATE, WORDS)
            res = harness.evaluate(test, TEMPLATE, WORDS)
        finally:
            delta.detach()
        row.update(trainable=delta.num_parameters(), test=res.accuracy, dev=dev.accuracy, losses=losses,
                   modules=len(delta.entries))
    row.update(fraction=row["trainable"] / backbone, n_test=len(test), seconds=round(time.perf_counter() - start, 1))
    return row


def best_on_dev_rows(by: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Per budget and seed, the S3Delta variant with the best dev accuracy (ties: the first in
    :data:`VARIANTS`) — what a study with one trial per variant keeps. Test accuracy never enters
    the choice. Only budgets where at least two variants ran on every seed get a row."""
    budgets = sorted({m.split("@")[1] for m in by if m.split("@")[0] in VARIANTS}, key=float)
    lines = []
    for budget in budgets:
        variants = [v for v in VARIANTS if f"{v}@{budget}" in by]
        seeds = [s for s in SEEDS if all(any(r["seed"] == s for r in by[f"{v}@{budget}"]) for v in variants)]
        if len(variants) < 2 or len(seeds) < 2:
            continue
        picked = []
        for seed in seeds:
            runs = [next(r for r in by[f"{v}@{budget}"] if r["seed"] == seed) for v in variants]
            best = max(range(len(runs)), key=lambda i: (runs[i]["dev"], -i))
            picked.append((seed, variants[best], runs[best]))
        acc = np.array([r["test"] for _, _, r in picked])
        per = " / ".join(f"{r['test']:.4f} ({v.replace('s3delta', '') or 'blind'})" for _, v, r in picked)
        frac = np.mean([100 * r["trainable"] / r["backbone_params"] for _, _, r in picked])
        lines.append(f"| s3delta best-on-dev@{budget} (of {', '.join(variants)}) | "
                     f"{int(np.mean([r['trainable'] for _, _, r in picked])):,} | {frac:.4f} | "
                     f"{acc.mean():.4f} ± {acc.std(ddof=1):.4f} | {per} | "
                     f"{np.mean([r['dev'] for _, _, r in picked]):.4f} | "
                     f"{sum(np.mean([r['seconds'] for r in by[f'{v}@{budget}']]) for v in variants):.0f} |")
    return lines


def report(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["method"], []).append(r)
    lines = ["| method | trainable params | % of backbone | test acc (mean ± sd) | per seed (13 / 21 / 42) | dev acc | s / run |",
             "|---|---:|---:|---:|---|---:|---:|"]
    for method in [m for m in METHODS if m in by] + sorted(set(by) - set(METHODS)):
        rs = by[method]
        acc = np.array([r["test"] for r in rs])
        dev = [r["dev"] for r in rs if r.get("dev") is not None]
        params = np.array([r["trainable"] for r in rs])
        ptxt = f"{int(params.mean()):,}" if params.std() == 0 else f"{int(params.mean()):,} ± {int(params.std()):,}"
        sd = f" ± {acc.std(ddof=1):.4f}" if len(acc) > 1 else ""
        devt = f"{np.mean(dev):.4f}" if dev else "–"
        extra = ""
        if method == "zero-shot":
            extra = f" (calibrated {rs[0]['test_calibrated']:.4f})"
        seeds = {r["seed"]: r["test"] for r in rs}
        per = " / ".join(f"{seeds[s]:.4f}" if s in seeds else "–" for s in SEEDS)
        lines.append(f"| {method} | {ptxt} | {100 * rs[0]['trainable'] / rs[0]['backbone_params']:.4f} | "
                     f"{acc.mean():.4f}{sd}{extra} | {per} | {devt} | {np.mean([r['seconds'] for r in rs]):.0f} |")
    lines.extend(best_on_dev_rows(by))
    n = rows[0]["n_test"] if rows else 0
    lines.append(f"\nGemma 3 270M, MR, test subsample n={n}; backbone {rows[0]['backbone_params']:,} parameters."
                 if rows else "")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/delta_table.jsonl")
    parser.add_argument("--methods", nargs="*", default=METHODS)
    parser.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS))
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--test-examples", type=int, default=300, help="fixed seeded test subsample size")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--warmup-epochs", type=int, default=2, help="S3Delta: module-only epochs before the gates move")
    parser.add_argument("--search-epochs", type=int, default=6, help="S3Delta: bi-level epochs")
    parser.add_argument("--gate-lr", type=float, default=0.1, help="S3Delta: Adam learning rate of the gate logits")
    parser.add_argument("--lr", type=float, default=5e-3, help="delta learning rate")
    parser.add_argument("--full-epochs", type=int, default=4)
    parser.add_argument("--full-lr", type=float, default=1e-5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--report", action="store_true", help="print the table and exit")
    args = parser.parse_args()
    path = Path(args.out)
    if args.report:
        print(report(path))
        return
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from autoprompt_kit import Harness, load_task

    done = set()
    if path.exists():
        done = {(r["method"], r["seed"]) for r in map(json.loads, path.read_text().splitlines()) if r}
    harness = Harness(batch_size=16, max_length=args.max_length, progress=False)
    for p in harness.model.parameters():
        p.requires_grad_(False)
    test = load_task("mr", max_examples=args.test_examples).test
    path.parent.mkdir(parents=True, exist_ok=True)
    # Seed-major order: every method gets its first seed before any gets its second (a run cut
    # short still covers every row).
    order = [(m, s) for s in args.seeds for m in args.methods if m != "zero-shot" or s == args.seeds[0]]
    for method, seed in order:
        if (method, seed) in done:
            continue
        row = run_row(method, seed, harness, test, args)
        with path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(f"{method:16s} seed {seed:3d}  params {row['trainable']:>11,}  test {row['test']:.4f}  "
              f"dev {row['dev'] if row['dev'] is not None else float('nan'):.4f}  {row['seconds']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
