"""AutoPrompt candidate evaluation: the reference's one-forward-per-candidate loop vs ours.

Same model, same train batch, same seed, same ``k`` candidates (from the same gradient), one
process. The reference algorithm (ucinlp/autoprompt) scores each candidate trigger with its own
forward pass over the batch and reads the label tokens from the full logits; ours scores the
current trigger and all ``k`` candidates in one length-bucketed pass of the harness
(``TriggerSearch.losses``), reading only the mask position, and — for a causal LM — running each
review and the triggers before the changed slot once for all candidates (the shared-prefix
cache). The same pass over whole rows (``Harness.shared_prefix = False``, what this benchmark
measured before the cache) is timed too. All three must choose the same token.

Run: ``python benchmarks/autoprompt_candidates.py [--k 10] [--rounds 3] [--batch 16]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoprompt_kit import Harness, Template, Verbalizer, load_task  # noqa: E402
from autoprompt_kit.methods.autoprompt import TriggerSearch, init_triggers, trigger_token_mask  # noqa: E402


def reference_losses(h: Harness, templates: list[Template], batch, verbalizer: Verbalizer) -> list[float]:
    """One forward per candidate, full logits, as the reference implementation does."""
    labels = torch.tensor([e.label for e in batch])
    word_ids = None
    losses = []
    for template in templates:
        rows = []
        for i, example in enumerate(batch):
            enc = h.encoder.encode(template, example)
            word_ids = [h.encoder.word_ids(w, enc.space_before_mask) for w in verbalizer.flat_words]
            rows.extend(h.encoder.rows(i, enc, word_ids))
        ids, mask = h.pad([r.input_ids for r in rows])
        with torch.inference_mode():
            logp = torch.log_softmax(h.model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        word_lp = torch.zeros(len(batch), len(verbalizer.flat_words))
        for b, r in enumerate(rows):
            for pos, tok, w in r.targets:
                word_lp[r.item, w] += logp[b, pos, tok]
        gold = verbalizer.aggregate(word_lp).gather(1, labels[:, None]).squeeze(1)
        losses.append(float(-gold.mean()))
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    task = load_task("mr", shots=16, seed=args.seed)
    h = Harness(batch_size=16, progress=False)
    verbalizer = Verbalizer.from_words({"negative": "terrible", "positive": "great"}, aggregation="sum")
    template = init_triggers(h, Template("{text_a} {trigger*3} {mask}."), "the")
    search = TriggerSearch(h, verbalizer, num_candidates=args.k, batch_size=args.batch,
                           token_mask=trigger_token_mask(h, verbalizer), seed=args.seed)
    rng = np.random.default_rng(args.seed)
    print(f"Gemma 3 270M, {h.device}, torch {torch.__version__} ({torch.get_num_threads()} threads); MR 16-shot train; "
          f"k={args.k}, batch {args.batch} reviews, template {template.text!r}; load average {os.getloadavg()[0]:.2f}")
    print("| round | slot | reference (s) | whole rows (s) | shared prefix (s) | reference / shared | "
          "whole rows / shared | same token | chosen | max abs Δ loss |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    total = {"reference": 0.0, "whole": 0.0, "shared": 0.0}
    agree = 0
    for r in range(args.rounds):
        batch = task.train[rng.choice(len(task.train), size=args.batch, replace=False)]
        position = int(rng.integers(template.num_triggers))
        cands = search.candidates(template, batch, position)
        ids = list(template.trigger_ids)
        trials = [template] + [template.with_triggers(ids[:position] + [c] + ids[position + 1:]) for c in cands]
        search.losses(trials[:2], batch)  # warm-up: tokenisation caches, allocator
        seconds = {}
        start = time.perf_counter()
        ref = reference_losses(h, trials, batch, verbalizer)
        seconds["reference"] = time.perf_counter() - start
        losses = {}
        for name, shared in (("whole", False), ("shared", True)):
            h.shared_prefix = shared
            start = time.perf_counter()
            losses[name] = search.losses(trials, batch)
            seconds[name] = time.perf_counter() - start
        choice = {int(np.argmin(x)) for x in (ref, losses["whole"], losses["shared"])}
        same = len(choice) == 1
        agree += same
        for key in total:
            total[key] += seconds[key]
        diff = float(np.max(np.abs(np.array(losses["shared"]) - np.array(losses["whole"]))))
        best = trials[int(np.argmin(losses["shared"]))]
        token = h.tokenizer.convert_ids_to_tokens([best.trigger_ids[position]])[0]
        print(f"| {r} | {position} | {seconds['reference']:.2f} | {seconds['whole']:.2f} | {seconds['shared']:.2f} | "
              f"{seconds['reference'] / seconds['shared']:.2f}× | {seconds['whole'] / seconds['shared']:.2f}× | "
              f"{same} | {token} | {diff:.1e} |", flush=True)
        template = best
    print(f"\ntotal: reference {total['reference']:.1f} s, whole rows {total['whole']:.1f} s, "
          f"shared prefix {total['shared']:.1f} s -> {total['reference'] / total['shared']:.2f}× faster than the "
          f"reference (target ≥ 10×; whole rows: {total['reference'] / total['whole']:.2f}×); same choice in "
          f"{agree}/{args.rounds} rounds; load average {os.getloadavg()[0]:.2f}")

if __name__ == "__main__":
    main()
