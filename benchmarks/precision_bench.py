"""fp32 vs bf16 vs int8 on the embedded Gemma: throughput and agreement with fp32, in one run.

``python benchmarks/precision_bench.py --examples 96`` — the same MR test reviews, template
``{text_a} It was {mask}.``, words terrible / great, scored by one harness per precision built on the
same loaded model (int8 quantises a copy); the examples/s of each and the ratio to fp32, the share of
class predictions equal to fp32's, accuracy, and the largest class log-prob difference. Then what
``--precision auto``'s probe picks on this machine (and why). Ratios are measured in one process, one
precision after another, so a machine's load moves them all alike; the CPU is named from /proc/cpuinfo.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from autoprompt_kit import Harness, load_task
from autoprompt_kit.harness import precision as precisions
from autoprompt_kit.models.loading import LoadedModel, load_model

from _report import emit  # noqa: E402  (benchmarks/, on the path when a script runs)


def cpu_name() -> str:
    """The CPU's model name and flags that matter here (AMX, AVX-512 BF16 / VNNI)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    shown = [f for f in ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni") if f in flags]
    return f"{name} ({', '.join(shown) or 'no AMX / AVX-512 BF16'})"


def loaded(gemma_config: str | None) -> LoadedModel:
    if not gemma_config:
        return load_model(None, None)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)  # random weights: speed only (agreement then says little)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(gemma_config))
    return LoadedModel(model, AutoTokenizer.from_pretrained(gemma_config), "causal", "gemma-3-270m (random)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--examples", type=int, default=96)
    parser.add_argument("--task", default="mr")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "int8"])
    parser.add_argument("--gemma-config", default=None, help="Gemma 3 config + tokenizer folder: random weights")
    parser.add_argument("--out", default=None, help="also append the Markdown table to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    split = load_task(args.task)["test"][: args.examples]
    words = {"negative": ["terrible"], "positive": ["great"]} if args.task == "mr" else None
    if words is None:
        raise SystemExit("only --task mr has built-in words here")
    template = "{text_a} It was {mask}."
    model = loaded(args.gemma_config)
    where = torch.cuda.get_device_name(0) if device.type == "cuda" else cpu_name()
    lines = [f"device: {where}; torch {torch.__version__}; threads {torch.get_num_threads()}; "
             f"{len(split)} {args.task} test examples, batch {args.batch_size}", "",
             "| precision | seconds | examples/s | speed vs fp32 | same predictions as fp32 | accuracy | "
             "max abs. class log-prob diff |", "|---|---:|---:|---:|---:|---:|---:|"]
    results = {}
    for precision in args.precisions:
        if precision == "int8" and not precisions.int8_supported(device):
            lines.append(f"| int8 | — | — | — | not supported on {device.type} | | |")
            continue
        h = Harness(model, kind=model.kind, device=device, precision=precision, batch_size=args.batch_size,
                    progress=False)
        h.evaluate(split[:8], template, words)  # warm-up: kernels, tokenizer caches
        h.clear_cache()
        start = time.perf_counter()
        result = h.evaluate(split, template, words)
        results[precision] = (time.perf_counter() - start, result)
        del h
    base_s, base = results.get("fp32", next(iter(results.values())))
    for precision, (seconds, r) in results.items():
        same = float(np.mean(r.predictions == base.predictions))
        diff = float(np.abs(r.class_logprobs - base.class_logprobs).max())
        lines.append(f"| {precision} | {seconds:.1f} | {len(split) / seconds:.1f} | {base_s / seconds:.2f}x | "
                     f"{same:.1%} | {r.accuracy:.3f} | {diff:.4f} |")
    if device.type == "cpu":
        probe = precisions.probe(model.model, model.tokenizer, model.kind, device, allow_int8=True)
        lines += ["", f"`--precision auto` probe: picks **{probe.choice}** — {probe.reason}"]
    text = "\n".join(lines)
    emit(text, args.out)


if __name__ == "__main__":
    main()
