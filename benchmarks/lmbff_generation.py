"""LM-BFF causal template generation: time vs beam width, and the KV-cache beam vs recomputing.

Gemma 3 270M (embedded), MR 8-shot per class = 16 train reviews, label words terrible / great,
spans up to 5 tokens. Ours: one prefill of the 16 reviews, then one token per (beam, review) row
per step with the KV cache reordered by beam parent, the output layer applied in row chunks.
Baseline (same process, same beam, same scores): every step re-runs the whole review + span for
each hypothesis (a beam search without a shared cache), with logits at the last position only.

    python benchmarks/lmbff_generation.py [--beams 8 16 32 64] [--baseline-beam 8]
"""

from __future__ import annotations

import argparse
import time

import torch

from autoprompt_kit import Harness, Verbalizer, load_task
from autoprompt_kit.methods.lmbff import CausalTemplateGenerator, span_token_mask


def recompute_generate(h: Harness, gen: CausalTemplateGenerator, examples, verbalizer: Verbalizer) -> list[tuple[str, float]]:
    """The same beam search without a cache: each step re-encodes review + span for every hypothesis."""
    prefixes = gen._prefixes(examples)
    gold = [h.encoder.word_ids(verbalizer.label_words[e.label][0], True)[0] for e in examples]
    allowed = span_token_mask(h, gen.ascii_only)
    hyps, lm, finished = [()], torch.zeros(1), {}
    with torch.inference_mode():
        for step in range(gen.max_span + 1):
            total = torch.zeros(len(hyps), allowed.shape[0])
            label = torch.zeros(len(hyps))
            for b, hyp in enumerate(hyps):
                seqs = [p + list(hyp) for p in prefixes]
                width = max(len(x) for x in seqs)
                ids = torch.tensor([[h.pad_id] * (width - len(x)) + x for x in seqs])      # left padding
                mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in seqs])
                logits = h.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp_min(0),
                                 logits_to_keep=1).logits[:, -1]
                logp = torch.log_softmax(logits.float(), -1)
                total[b] = logp.sum(0)
                label[b] = logp[torch.arange(len(prefixes)), torch.tensor(gold)].sum()
            for b, hyp in enumerate(hyps):
                if len(hyp) >= gen.min_span:
                    finished[gen.template_text(hyp)] = max(finished.get(gen.template_text(hyp), -1e30),
                                                           float(lm[b] + label[b]))
            if step == gen.max_span:
                break
            top = (lm[:, None] + total).masked_fill(~allowed, float("-inf")).flatten().topk(gen.beam)
            parents, tokens = top.indices // allowed.shape[0], top.indices % allowed.shape[0]
            hyps = [hyps[p] + (t,) for p, t in zip(parents.tolist(), tokens.tolist())]
            lm = top.values
    return sorted(finished.items(), key=lambda kv: -kv[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beams", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--baseline-beam", type=int, default=8)
    parser.add_argument("--max-span", type=int, default=5)
    args = parser.parse_args()
    h = Harness(progress=False)
    train = load_task("mr", shots=8, seed=13).train
    verbalizer = Verbalizer.from_words({"negative": ["terrible"], "positive": ["great"]})
    print(f"Gemma 3 270M, {torch.get_num_threads()} threads, {len(train)} MR train reviews, spans <= {args.max_span} tokens")
    print("| beam | ours (s) | templates | best template | score |")
    print("|---|---|---|---|---|")
    timings = {}
    for beam in args.beams:
        gen = CausalTemplateGenerator(h, beam=beam, max_span_tokens=args.max_span)
        start = time.perf_counter()
        out = gen.generate(train, verbalizer, keep=10_000)
        timings[beam] = time.perf_counter() - start
        print(f"| {beam} | {timings[beam]:.1f} | {len(out)} | `{out[0].template}` | {out[0].score:.2f} |", flush=True)
    beam = args.baseline_beam
    gen = CausalTemplateGenerator(h, beam=beam, max_span_tokens=args.max_span)
    start = time.perf_counter()
    ours = gen.generate(train, verbalizer, keep=10_000)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    base = recompute_generate(h, gen, train, verbalizer)
    base_s = time.perf_counter() - start
    same = [g.template for g in ours[:5]] == [t for t, _ in base[:5]]
    diff = max(abs(g.score - dict(base)[g.template]) for g in ours)
    print(f"\nbeam {beam}: recompute baseline {base_s:.1f} s, ours {ours_s:.1f} s -> {base_s / ours_s:.2f}x faster; "
          f"same top-5 templates: {same}; max score difference {diff:.2e}")


if __name__ == "__main__":
    main()
