"""Cost curves: harness evaluation time and memory vs examples, AutoPrompt round time vs candidates.

Run (the numbers in ``benchmarks/cost_curves.md`` come from exactly this)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cost_curves.py

Options: ``--sizes 100 300 1000 3000 10000`` (examples per zero-shot evaluation, drawn from all
10,605 MR snippets: train + dev + test, shuffled with seed 0, nested), ``--candidates 5 10 20 40 80``
(AutoPrompt ``k``), ``--model random`` (default: Gemma 3 270M's architecture and tokenizer with
``--layers`` 2 transformer layers and random weights; cost scaling does not depend on the weights)
or ``--model default`` (the real embedded Gemma 3 270M, ~16 examples/s on 2 cores: 10,000 examples
take ~10 min) or any model name/folder the harness loads, ``--out benchmarks`` (where
``cost_curves.md`` and ``cost_curves.png`` go; the plot needs matplotlib).

Every size and the candidate sweep run in their own fresh process (one torch thread), so the
memory of one measurement never pads the next:

* evaluation — ``Harness.evaluate`` on ``n`` examples, template ``{text_a} It was {mask}.``,
  words terrible/great, batch 16, cold caches (tokenising is part of the time). Peak memory is the
  growth over the level just before the call, sampled every 5 ms in a thread, of the resident set
  and of the glibc heap's bytes in use (``mallinfo2``; the resident set also counts memory the
  allocator has freed but keeps); then the Python-side structures the call builds (token ids, rows,
  batch lists) are measured alone with ``tracemalloc`` (torch tensors are not in it), with what
  stays in the tokenisation cache;
* AutoPrompt — ``TriggerSearch.step`` on MR 16-shot train (template ``{text_a} {trigger*3}
  {mask}.``, batch 16, ``--rounds`` 1): the gradient + top-``k`` part (``candidates``) and the batched scoring of
  the current trigger and all ``k`` candidates (``losses``) are timed separately; every round starts
  from the same trigger, so each ``k`` sees the same positions and batches.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import time
import tracemalloc
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
MIB = 2**20


# ----------------------------------------------------------------------------------------------
# Workers (one fresh process per measurement)
# ----------------------------------------------------------------------------------------------
def build_harness(model: str, layers: int) -> Any:
    """The harness on the chosen model: ``random`` = Gemma 3 270M's config cut to ``layers`` layers."""
    import torch

    torch.set_num_threads(1)
    from autoprompt_kit import Harness

    if model != "random":
        return Harness(None if model == "default" else model, batch_size=16, progress=False)
    from transformers import AutoConfig, AutoTokenizer, Gemma3ForCausalLM

    from autoprompt_kit.models.loading import default_model_dir

    folder = default_model_dir()
    config = AutoConfig.from_pretrained(folder)
    config.num_hidden_layers = layers
    config.layer_types = ["sliding_attention"] * (layers - 1) + ["full_attention"]
    torch.manual_seed(0)
    return Harness(Gemma3ForCausalLM(config), AutoTokenizer.from_pretrained(folder), kind="causal", batch_size=16,
                   progress=False)


def mr_examples(n: int) -> Any:
    """The first ``n`` of all MR snippets (train + dev + test) in a fixed shuffled order."""
    from autoprompt_kit import load_task
    from autoprompt_kit.data import Split

    task = load_task("mr")
    pool = list(task.train) + list(task.dev) + list(task.test)
    if n > len(pool):
        raise SystemExit(f"--sizes: MR has {len(pool)} snippets, asked for {n}")
    order = np.random.default_rng(0).permutation(len(pool))[:n]
    return Split([pool[i] for i in order], name=f"mr-all-{n}")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def malloc_stats() -> tuple[int, int]:
    """glibc heap ``(bytes in use, bytes free but held)``; ``(0, 0)`` without glibc's ``mallinfo2``."""
    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return 0, 0
    fn.restype = _MallInfo2
    info = fn()
    return info.uordblks + info.hblkhd, info.fordblks


def measure_peaks() -> Any:
    """:class:`PeakRSS` (resident set) that also samples the glibc heap's bytes in use."""
    from _memory import PeakRSS  # the resident-set sampler every benchmark uses

    class PeakMemory(PeakRSS):
        def __enter__(self) -> PeakMemory:
            self.heap_base, self.free_base = malloc_stats()
            self.heap_peak = 0
            return super().__enter__()  # type: ignore[return-value]

        def _poll(self) -> None:
            while not self._stop.wait(0.005):
                self.peak = max(self.peak, self._rss() - self.base)
                self.heap_peak = max(self.heap_peak, malloc_stats()[0] - self.heap_base)

        def __exit__(self, *exc: object) -> None:
            super().__exit__(*exc)
            used, free = malloc_stats()
            self.heap_peak = max(self.heap_peak, used - self.heap_base)
            self.free_growth = free - self.free_base

    return PeakMemory


def measure_evaluation(model: str, layers: int, n: int) -> dict[str, Any]:
    """Time, resident-set growth and Python-heap size of one zero-shot evaluation on ``n`` examples."""
    from autoprompt_kit import Template, Verbalizer

    h = build_harness(model, layers)
    split = mr_examples(n)
    template = Template("{text_a} It was {mask}.")
    verbalizer = Verbalizer.from_words({"negative": "terrible", "positive": "great"})
    h.evaluate(mr_examples(10_605)[-16:], template, verbalizer)  # warm-up on other examples
    gc.collect()
    with measure_peaks()(h.device) as mem:
        start = time.perf_counter()
        result = h.evaluate(split, template, verbalizer)
        seconds = time.perf_counter() - start
    accuracy = result.accuracy
    del result
    # The Python-side structures evaluate builds for n examples, alone (cold caches again).
    h.clear_cache(pieces=True)
    gc.collect()
    tracemalloc.start()
    batches = h.batches([template], [list(split)], verbalizer)
    py_peak = tracemalloc.get_traced_memory()[1]
    del batches
    gc.collect()
    py_retained = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {"n": n, "seconds": seconds, "accuracy": accuracy, "rss_peak": mem.peak, "heap_peak": mem.heap_peak,
            "free_growth": mem.free_growth,
            "py_peak": py_peak, "py_retained": py_retained, "model": h.model_name,
            "layers": int(h.model.config.num_hidden_layers)}


def timed_methods(obj: Any, names: Sequence[str], log: dict[str, float]) -> None:
    """Wrap ``obj``'s methods so each call adds its wall time to ``log[name]``."""
    for name in names:
        fn: Callable[..., Any] = getattr(obj, name)

        def wrapper(*args: Any, _fn: Callable[..., Any] = fn, _name: str = name, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return _fn(*args, **kwargs)
            finally:
                log[_name] += time.perf_counter() - start

        setattr(obj, name, wrapper)


def measure_candidates(model: str, layers: int, ks: Sequence[int], rounds: int, batch: int) -> dict[str, Any]:
    """Time of AutoPrompt trigger-update rounds (``TriggerSearch.step``) for each ``k``."""
    from autoprompt_kit import Template, Verbalizer, load_task
    from autoprompt_kit.methods.autoprompt import TriggerSearch, init_triggers, trigger_token_mask

    h = build_harness(model, layers)
    task = load_task("mr", shots=16, seed=13)
    verbalizer = Verbalizer.from_words({"negative": "terrible", "positive": "great"}, aggregation="sum")
    template = init_triggers(h, Template("{text_a} {trigger*3} {mask}."), "the")
    token_mask = trigger_token_mask(h, verbalizer)
    TriggerSearch(h, verbalizer, num_candidates=ks[0], batch_size=batch, token_mask=token_mask,
                  seed=0).step(template, task.train)  # warm-up
    out = []
    for k in ks:
        search = TriggerSearch(h, verbalizer, num_candidates=k, batch_size=batch, token_mask=token_mask, seed=13)
        for r in range(rounds):
            log: dict[str, float] = defaultdict(float)
            timed_methods(search, ("candidates", "losses"), log)
            start = time.perf_counter()
            search.step(template, task.train)  # every round from the same trigger
            total = time.perf_counter() - start
            out.append({"k": k, "round": r, "candidates": log["candidates"], "losses": log["losses"],
                        "step": total, "rows": (k + 1) * batch})
    return {"rounds": out, "model": h.model_name, "layers": int(h.model.config.num_hidden_layers), "batch": batch}


def run_worker(args: list[str]) -> dict[str, Any]:
    """This script in a fresh process; its last stdout line is the JSON result."""
    proc = subprocess.run([sys.executable, __file__, *args], check=False, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode != 0:
        raise SystemExit(f"worker {args} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------
# Fits, tables, plot
# ----------------------------------------------------------------------------------------------
def line_fit(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares ``y = a + b·x``: returns ``(a, b, R²)``."""
    xs, ys = np.asarray(x, float), np.asarray(y, float)
    b, a = np.polyfit(xs, ys, 1)
    ss_res = float(((ys - (a + b * xs)) ** 2).sum())
    ss_tot = float(((ys - ys.mean()) ** 2).sum())
    return float(a), float(b), 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0


def per_k(rounds: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Mean of the rounds for each ``k``."""
    out = []
    for k in sorted({r["k"] for r in rounds}):
        rs = [r for r in rounds if r["k"] == k]
        out.append({"k": k, "rows": rs[0]["rows"], **{key: float(np.mean([r[key] for r in rs]))
                                                     for key in ("candidates", "losses", "step")}})
    return out


def markdown(evals: list[dict[str, Any]], cands: dict[str, Any], header: dict[str, Any]) -> str:
    ns = [e["n"] for e in evals]
    a, b, r2 = line_fit(ns, [e["seconds"] for e in evals])
    _, rss_b, _ = line_fit(ns, [e["rss_peak"] for e in evals])
    _, heap_b, _ = line_fit(ns, [e["heap_peak"] for e in evals])
    _, py_b, _ = line_fit(ns, [e["py_peak"] for e in evals])
    _, ret_b, _ = line_fit(ns, [e["py_retained"] for e in evals])
    ks = per_k(cands["rounds"])
    rounds = len(cands["rounds"]) // len(ks)
    ka, kb, kr2 = line_fit([k["k"] for k in ks], [k["losses"] for k in ks])
    sa, sb, sr2 = line_fit([k["k"] for k in ks], [k["step"] for k in ks])
    lines = [
        "# Cost curves",
        "",
        f"`{header['command']}` — {header['date']}, {header['machine']}; model: {header['model']}. "
        f"Load average {header['load_before']:.2f} before, {header['load_after']:.2f} after: the CPU is shared "
        "with other jobs, so absolute times are inflated; the shape of the curves is what this shows.",
        "",
        "## Zero-shot evaluation vs number of examples",
        "",
        "`Harness.evaluate`, template `{text_a} It was {mask}.`, words terrible/great, batch 16, MR snippets "
        "(train + dev + test, shuffled, nested), cold caches (tokenising is in the time), one fresh process per "
        "size. Peaks are growth over the level just before the call, sampled every 5 ms: the resident set (what "
        "the OS sees), and the glibc heap's bytes in use (`mallinfo2`: torch tensors, tokenizer buffers, Python "
        "objects over 512 B; not Python's small-object arenas). *Heap free but held* is glibc's free-list "
        "growth at the end of the call: freed memory the allocator keeps, which the resident set still "
        "counts. Python heap: `tracemalloc` peak of the token ids, rows and batch lists the call builds "
        "(measured alone), and what of them stays in the harness's tokenisation cache.",
        "",
        "| n | seconds | examples/s | accuracy | peak RSS growth (MiB) | peak heap in use (MiB) "
        "| heap free but held (MiB) | Python heap peak (MiB) | tokenisation cache (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in evals:
        lines.append(f"| {e['n']:,} | {e['seconds']:.2f} | {e['n'] / e['seconds']:.1f} | {e['accuracy']:.4f} | "
                     f"{e['rss_peak'] / MIB:.1f} | {e['heap_peak'] / MIB:.1f} | {e['free_growth'] / MIB:.1f} | "
                     f"{e['py_peak'] / MIB:.1f} | {e['py_retained'] / MIB:.1f} |")
    lines += [
        "",
        f"Fit `seconds = {a:.2f} + {b * 1000:.2f} · n/1000`: **R² = {r2:.4f}**, **{b * 1000:.2f} s per 1,000 "
        f"examples**. Memory slopes (least squares over n): peak RSS {rss_b / 1024:.2f} KiB/example, peak heap "
        f"in use {heap_b / 1024:.2f} KiB/example, Python heap peak {py_b / 1024:.2f} KiB/example, "
        f"tokenisation cache {ret_b / 1024:.2f} KiB/example.",
        "",
        "## AutoPrompt trigger-update round vs candidates `k`",
        "",
        f"`TriggerSearch.step` on MR 16-shot train, template `{{text_a}} {{trigger*3}} {{mask}}.`, batch "
        f"{cands['batch']}, {rounds} round{'s' if rounds > 1 else ''} per `k` (mean; the same positions and batches "
        "for every `k`). `candidates`: gradient w.r.t. the trigger embeddings + top-`k`; `losses`: the current "
        "trigger and all `k` candidates scored in one batched pass (exact log-probabilities).",
        "",
        "| k | rows scored | gradient + top-k (s) | scoring k+1 triggers (s) | round (s) | scoring per row (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for k in ks:
        lines.append(f"| {k['k']} | {k['rows']:,} | {k['candidates']:.2f} | {k['losses']:.2f} | {k['step']:.2f} | "
                     f"{k['losses'] / k['rows'] * 1000:.1f} |")
    lines += [
        "",
        f"Fit scoring `= {ka:.2f} + {kb:.3f} · k` s: **R² = {kr2:.4f}**; whole round `= {sa:.2f} + {sb:.3f} · k` s: "
        f"**R² = {sr2:.4f}**.",
        "",
    ]
    return "\n".join(lines)


def plot(evals: list[dict[str, Any]], cands: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    ns = np.array([e["n"] for e in evals])
    secs = np.array([e["seconds"] for e in evals])
    a, b, r2 = line_fit(ns, secs)
    left.plot(ns, secs, "o", color="C0", label="evaluate time")
    left.plot(ns, a + b * ns, "-", color="C0", alpha=0.5, label=f"linear fit, R² = {r2:.4f}")
    left.set_ylim(bottom=0)
    left.set_xlabel("examples n")
    left.set_ylabel("seconds", color="C0")
    mem = left.twinx()
    mem.plot(ns, [e["rss_peak"] / MIB for e in evals], "s--", color="C3", label="peak RSS growth")
    mem.plot(ns, [e["heap_peak"] / MIB for e in evals], "D-.", color="C1", label="peak heap in use (mallinfo2)")
    mem.plot(ns, [e["py_peak"] / MIB for e in evals], "^:", color="C2", label="Python heap of token rows (tracemalloc)")
    mem.set_ylabel("MiB", color="C3")
    mem.set_ylim(bottom=0, top=max(64.0, 1.2 * max(e["rss_peak"] / MIB for e in evals)))
    handles = left.get_legend_handles_labels()[0] + mem.get_legend_handles_labels()[0]
    labels = left.get_legend_handles_labels()[1] + mem.get_legend_handles_labels()[1]
    left.legend(handles, labels, loc="upper left", fontsize=8)
    left.set_title("zero-shot evaluation: time and memory vs n")
    ks = per_k(cands["rounds"])
    kx = np.array([k["k"] for k in ks])
    for key, label, color in (("step", "whole round", "C0"), ("losses", "scoring k+1 triggers", "C1"),
                              ("candidates", "gradient + top-k", "C2")):
        ys = np.array([k[key] for k in ks])
        ka, kb, kr2 = line_fit(kx, ys)
        right.plot(kx, ys, "o", color=color, label=f"{label} (R² = {kr2:.3f})")
        right.plot(kx, ka + kb * kx, "-", color=color, alpha=0.5)
    right.set_ylim(bottom=0)
    right.set_xlabel("candidates k")
    right.set_ylabel("seconds per round")
    right.set_title("AutoPrompt trigger update: time vs k")
    right.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000, 3000, 10000])
    parser.add_argument("--candidates", type=int, nargs="+", default=[5, 10, 20, 40, 80])
    parser.add_argument("--model", default="random", help="random (default), default (real Gemma 3 270M), or a name")
    parser.add_argument("--layers", type=int, default=2, help="transformer layers of the random model")
    parser.add_argument("--rounds", type=int, default=1, help="AutoPrompt rounds per k (mean)")
    parser.add_argument("--batch", type=int, default=16, help="AutoPrompt batch (examples)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks")
    parser.add_argument("--worker-eval", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker-candidates", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_eval is not None:
        print(json.dumps(measure_evaluation(args.model, args.layers, args.worker_eval)))
        return
    if args.worker_candidates:
        print(json.dumps(measure_candidates(args.model, args.layers, args.candidates, args.rounds, args.batch)))
        return

    common = ["--model", args.model, "--layers", str(args.layers)]
    load_before = os.getloadavg()[0]
    evals = []
    for n in sorted(args.sizes):
        evals.append(run_worker([*common, "--worker-eval", str(n)]))
        e = evals[-1]
        print(f"n={n}: {e['seconds']:.2f} s, peak RSS +{e['rss_peak'] / MIB:.1f} MiB, "
              f"Python heap peak {e['py_peak'] / MIB:.1f} MiB", flush=True)
    cands = run_worker([*common, "--worker-candidates", "--candidates", *map(str, sorted(args.candidates)),
                        "--rounds", str(args.rounds), "--batch", str(args.batch)])
    for k in per_k(cands["rounds"]):
        print(f"k={k['k']}: round {k['step']:.2f} s (scoring {k['losses']:.2f} s)", flush=True)
    import torch

    model = (f"Gemma 3 270M architecture, {evals[0]['layers']} layers, random weights, Gemma tokenizer"
             if args.model == "random" else f"{evals[0]['model']} ({evals[0]['layers']} layers)")
    argv = " ".join(sys.argv[1:])
    header = {"command": f"OMP_NUM_THREADS=1 python benchmarks/cost_curves.py{' ' + argv if argv else ''}",
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"{os.cpu_count()}-core CPU, torch {torch.__version__}, 1 thread",
              "model": model, "load_before": load_before, "load_after": os.getloadavg()[0]}
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(evals, cands, header)
    (args.out / "cost_curves.md").write_text(text)
    print("\n" + text)
    try:
        plot(evals, cands, args.out / "cost_curves.png", model)
    except ImportError:
        print("(no plot: pip install matplotlib)")


if __name__ == "__main__":
    main()
