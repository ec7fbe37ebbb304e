"""AutoPrompt candidate evaluation: the reference's one-forward-per-candidate loop vs ours.

Same model, same train batch, same seed, same ``k`` candidates (from the same gradient), one
process. The reference algorithm (ucinlp/autoprompt) scores each candidate trigger with its own
forward pass over the batch and reads the label tokens from the full logits; ours scores the
current trigger and all ``k`` candidates in one length-bucketed pass of the harness
(``TriggerSearch.losses``), reading only the mask position. Both must choose the same token.

Run: ``python benchmarks/autoprompt_candidates.py [--k 10] [--rounds 3] [--batch 16]``.
"""

from __future__ import annotations

import argparse
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
          f"k={args.k}, batch {args.batch} reviews, template {template.text!r}")
    print("| round | position | reference (s) | ours (s) | speed-up | same token | chosen |")
    print("|---|---|---|---|---|---|---|")
    total_ref = total_ours = 0.0
    agree = 0
    for r in range(args.rounds):
        batch = task.train[rng.choice(len(task.train), size=args.batch, replace=False)]
        position = int(rng.integers(template.num_triggers))
        cands = search.candidates(template, batch, position)
        ids = list(template.trigger_ids)
        trials = [template] + [template.with_triggers(ids[:position] + [c] + ids[position + 1:]) for c in cands]
        search.losses(trials[:2], batch)  # warm-up: tokenisation caches, allocator
        start = time.perf_counter()
        ref = reference_losses(h, trials, batch, verbalizer)
        t_ref = time.perf_counter() - start
        start = time.perf_counter()
        ours = search.losses(trials, batch)
        t_ours = time.perf_counter() - start
        same = int(np.argmin(ref)) == int(np.argmin(ours))
        agree += same
        total_ref += t_ref
        total_ours += t_ours
        best = trials[int(np.argmin(ours))]
        token = h.tokenizer.convert_ids_to_tokens([best.trigger_ids[position]])[0]
        print(f"| {r} | {position} | {t_ref:.2f} | {t_ours:.2f} | {t_ref / t_ours:.2f}× | {same} | {token} |")
        template = best
    print(f"\ntotal: reference {total_ref:.1f} s, ours {total_ours:.1f} s -> {total_ref / total_ours:.2f}× faster "
          f"(target ≥ 3×); same choice in {agree}/{args.rounds} rounds")


if __name__ == "__main__":
    main()
