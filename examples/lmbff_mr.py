"""LM-BFF on MR with the embedded Gemma 3 270M: generated templates and searched label words vs manual.

For each seed (16-shot train/dev, LM-BFF protocol): one LM-BFF study generates templates with the
causal LM (beam search over the span between the review and the label word, scored over all 32
train reviews), ranks them zero-shot on dev and runs the best as trials; a second study searches
label words for the manual template. The manual prompt, the best generated template and the best
label words are then scored on the held-out test split, with and without content-free calibration.

    python examples/lmbff_mr.py [--seeds 13 21 42] [--beam 32] [--test-examples 1000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from autoprompt_kit import Harness, Verbalizer, load_task
from autoprompt_kit.harness import EvalResult, classification_metrics
from autoprompt_kit.methods import LMBFFConfig
from autoprompt_kit.search import SearchContext, SearchJob, finish_search, get_searcher, run_search

MANUAL = "{text_a} It was {mask}."
WORDS = {"negative": ["terrible"], "positive": ["great"]}


def accuracies(h: Harness, split, template: str, words: dict) -> tuple[float, float]:
    """Test accuracy uncalibrated and with content-free calibration (same forward pass)."""
    verbalizer = Verbalizer.from_words(words)
    result: EvalResult = h.evaluate(split, template, verbalizer)
    prior = h.class_prior(template, verbalizer)
    class_lp = verbalizer.class_logprobs(torch.as_tensor(result.word_logprobs), prior=prior)
    calibrated, _ = classification_metrics(result.labels, class_lp.argmax(1).numpy(), verbalizer.num_classes)
    return result.accuracy, calibrated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[13, 21, 42])
    parser.add_argument("--beam", type=int, default=32)
    parser.add_argument("--top-n", type=int, default=5)
    parser.add_argument("--keep", type=int, default=40, help="generated templates ranked on dev")
    parser.add_argument("--test-examples", type=int, default=None, help="cap the test split (fixed subsample)")
    parser.add_argument("--storage", default="sqlite:///runs/examples.db")
    parser.add_argument("--cache", default="runs/lmbff_mr_scores.json", help="manual-prompt test scores kept here")
    parser.add_argument("--no-words-test", dest="words_test", action="store_false",
                        help="report the found label words on train/dev only (saves one test pass per seed)")
    args = parser.parse_args()

    h = Harness(progress=False)
    test = load_task("mr", max_examples=args.test_examples).test
    cache = Path(args.cache)
    scores = json.loads(cache.read_text()) if cache.exists() else {}
    key = f"manual:{test.fingerprint}"
    if key not in scores:  # test scores are costly on a CPU: kept across runs of this script
        scores[key] = accuracies(h, test, MANUAL, WORDS)
        cache.write_text(json.dumps(scores))
    manual = tuple(scores[key])
    print(f"manual {MANUAL} terrible/great: test {manual[0]:.4f} (calibrated {manual[1]:.4f}), n={len(test)}", flush=True)
    rows = []
    for seed in args.seeds:
        task = load_task("mr", shots=16, seed=seed)
        info = task.info(shots=16, seed=seed)
        start = time.perf_counter()
        templates = LMBFFConfig(template=MANUAL, label_words=WORDS, beam=args.beam, keep_generated=args.keep, top_n=args.top_n,
                                calibration=["content_free"])  # uncalibrated, Gemma says "great" to ~every review
        job = SearchJob(get_searcher("lmbff")(templates), f"lmbff-mr-templates-cal-s{seed}-b{args.beam}", args.storage,
                        n_trials=args.top_n, seed=seed, progress=False, task_info=info,
                        model_info={"name": "gemma-3-270m", "kind": "causal"})
        ctx = SearchContext(task, h, seed)
        study = run_search(job, ctx)
        art = study.user_attrs["artifacts"]
        best = finish_search(study, job, ctx, test_split=None).prompt
        gen_seconds = time.perf_counter() - start
        print(f"\nseed {seed}: generation {art['generation_seconds']:.0f}s, dev ranking of "
              f"{len(art['generated_templates'])} templates {art['ranking_seconds']:.0f}s; top 5 by dev:")
        for g in art["generated_templates"][:5]:
            print(f"  dev {g['dev_accuracy']:.4f}  gen {g['score']:9.2f}  {g['template']}")
        words_cfg = LMBFFConfig(template=MANUAL, generate_templates=False, search_label_words=True, label_k=20,
                                label_assignments=5)
        job = SearchJob(get_searcher("lmbff")(words_cfg), f"lmbff-mr-words-contrastive-s{seed}", args.storage, n_trials=5,
                        seed=seed, progress=False, task_info=info, model_info={"name": "gemma-3-270m", "kind": "causal"})
        wstudy = run_search(job, ctx)
        wart = wstudy.user_attrs["artifacts"]
        best_words = finish_search(wstudy, job, ctx, test_split=None).prompt
        found_words = dict(zip(task.label_names, (list(ws) for ws in best_words.verbalizer.label_words)))
        print("  label-word candidates: " + "; ".join(f"{k}: {', '.join(v[:8])}" for k, v in
                                                       wart["label_word_candidates"].items()))
        print("  assignments (train acc, dev acc): " + "; ".join(
            f"{'/'.join(a['words'].values())} ({a['train_accuracy']:.2f}, {a['dev_accuracy']:.2f})"
            for a in wart["label_word_assignments"]))
        gen = accuracies(h, test, best.template.text, WORDS)
        words = accuracies(h, test, MANUAL, found_words) if args.words_test else (float("nan"), float("nan"))
        rows.append((seed, best.template.text, gen, "/".join(w[0] for w in found_words.values()), words, gen_seconds))
        print(f"  test: manual {manual[0]:.4f} | generated {gen[0]:.4f} (cal {gen[1]:.4f}) `{best.template.text}` | "
              f"label words {words[0]:.4f} (cal {words[1]:.4f}) {rows[-1][3]}  [{time.perf_counter() - start:.0f}s]",
              flush=True)

    sd = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0  # noqa: E731
    print(f"\nMR test (n={len(test)}), Gemma 3 270M, 16-shot train/dev per seed, beam {args.beam}")
    print("| seed | manual | generated template | gen. (calibrated) | auto label words | words (calibrated) |")
    print("|---|---|---|---|---|---|")
    for seed, text, g, w_text, w, _ in rows:
        print(f"| {seed} | {manual[0]:.4f} | `{text}` {g[0]:.4f} | {g[1]:.4f} | {w_text} {w[0]:.4f} | {w[1]:.4f} |")
    cols = [[r[2][0] for r in rows], [r[2][1] for r in rows], [r[4][0] for r in rows], [r[4][1] for r in rows]]
    print(f"| mean ± sd | {manual[0]:.4f} (cal {manual[1]:.4f}) | " +
          " | ".join(f"{statistics.mean(c):.4f} ± {sd(c):.4f}" for c in cols) + " |")


if __name__ == "__main__":
    main()
