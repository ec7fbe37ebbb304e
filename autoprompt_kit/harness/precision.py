"""The harness's numeric precision, and ``auto``: the fastest one that keeps fp32's predictions.

* ``fp32`` — full precision (the reference every exactness test uses);
* ``bf16`` — bf16 autocast around every forward pass (fp32 weights stay, so training still works);
* ``int8`` — dynamic int8 quantisation of the body's linear layers
  (``torch.ao.quantization.quantize_dynamic``; CPU only, scoring only: no gradients pass through
  quantised layers). The output layer is never quantised: the harness reads its rows directly.
* ``auto`` — on CUDA bf16. On a CPU a short probe (:func:`probe`) times one forward pass of a fixed
  batch (:data:`PROBE_TEXTS`, 8 sentences, at most :data:`PROBE_TOKENS` tokens each) in every
  precision this CPU supports, and takes the fastest that is at least :data:`MIN_GAIN` × faster than
  fp32 **and** whose next-token predictions (argmax over the whole vocabulary at every real position
  of the batch, ~150 predictions) agree with fp32's on at least :data:`AGREEMENT` (99 %) of them.
  Models under :data:`MIN_PARAMS` parameters stay in fp32 without a probe (their cost is Python, not
  arithmetic). The choice is remembered on disk per (model, CPU, torch, threads), so later runs on
  the same machine take the same precision at once — a resumed study keeps its fingerprint.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16", "int8")
CHOICES = ("auto", *PRECISIONS)
#: Share of probe predictions a reduced precision must keep equal to fp32's.
AGREEMENT = 0.99
#: Speed-up over fp32 a reduced precision must show in the probe (timing noise never flips the choice).
MIN_GAIN = 1.15
#: Models smaller than this stay in fp32 under ``auto`` (no probe).
MIN_PARAMS = 20_000_000
#: Longest probe row, in tokens.
PROBE_TOKENS = 24
#: The probe batch: plain English of the kind prompts hold (reviews, topics, questions).
PROBE_TEXTS = (
    "The film was a delight from start to finish, and the cast clearly had fun making it.",
    "I would not recommend this hotel: the room was dirty and the staff ignored every request.",
    "Stocks fell sharply on Tuesday after the central bank raised interest rates again.",
    "The team scored twice in the final ten minutes to win the championship.",
    "Scientists have found a new species of frog in the rain forests of Peru.",
    "Question: what is the capital of Australia? Answer: the capital of Australia is",
    "The new phone has a bigger screen, a faster chip and a battery that lasts two days.",
    "She opened the letter slowly, afraid of what it might say about her brother.",
)


@dataclass
class ProbeResult:
    """What the ``auto`` probe measured and chose."""

    choice: str
    reason: str
    seconds: dict[str, float] = field(default_factory=dict)  # best forward time per precision
    agreement: dict[str, float] = field(default_factory=dict)  # share of fp32's predictions kept
    predictions: int = 0

    def line(self) -> str:
        """One line for the user: what was picked and why."""
        return f"precision auto -> {self.choice}: {self.reason}"


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 matrix products are native here (CUDA, or a CPU with AVX-512 BF16 / AMX)."""
    if device.type == "cuda":
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def int8_supported(device: torch.device) -> bool:
    """Dynamic int8 linear layers run on CPUs with an x86 / fbgemm quantised engine."""
    return device.type == "cpu" and bool({"x86", "fbgemm"} & set(torch.backends.quantized.supported_engines))


def quantize_int8(model: nn.Module, keep: nn.Module | None = None) -> nn.Module:
    """Quantise ``model``'s linear layers to dynamic int8 in place, except ``keep`` (the output layer,
    whose weight rows the harness reads; often tied to the input embeddings)."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    engines = torch.backends.quantized.supported_engines
    if torch.backends.quantized.engine not in ("x86", "fbgemm"):
        torch.backends.quantized.engine = "x86" if "x86" in engines else "fbgemm"
    names = {
        name: per_channel_dynamic_qconfig
        for name, module in model.named_modules()
        if type(module) is nn.Linear and module is not keep
    }
    with warnings_off():
        return quantize_dynamic(model, names, inplace=True)


@contextlib.contextmanager
def warnings_off() -> Any:
    """``torch.ao.quantization`` warns that it is deprecated in favour of torchao (not installed here)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast for ``bf16``; nothing for fp32 and int8 (int8 layers compute in their own types)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _probe_inputs(tokenizer: Any, kind: str, device: torch.device) -> dict[str, torch.Tensor]:
    enc = tokenizer(list(PROBE_TEXTS), truncation=True, max_length=PROBE_TOKENS, padding=True, return_tensors="pt")
    kwargs = {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}
    if kind == "seq2seq":  # any decoder input times the decoder; the same one in every precision
        kwargs["decoder_input_ids"] = kwargs["input_ids"]
        kwargs["decoder_attention_mask"] = kwargs["attention_mask"]
    return kwargs


def _hidden(
    model: nn.Module, head: nn.Module, kwargs: dict[str, Any], precision: str, device: torch.device
) -> torch.Tensor:
    """The output layer's input at every position (the body's work, which the harness pays in full;
    the output layer itself is applied to a few rows only when scoring)."""
    captured: dict[str, torch.Tensor] = {}

    def forward(x: torch.Tensor) -> torch.Tensor:
        captured["x"] = x
        return x[..., :1]

    patched_before = "forward" in head.__dict__
    original = head.forward
    head.forward = forward
    try:
        with torch.inference_mode(), autocast(precision, device):
            model(**kwargs, use_cache=False)
    finally:
        if patched_before:
            head.forward = original
        else:
            del head.forward
    return captured["x"]


def _timed(run: Callable[[], torch.Tensor], repeats: int = 2) -> tuple[float, torch.Tensor]:
    """Best of ``repeats`` timed calls after one warm-up (kernels and caches are made on the first)."""
    out = run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - start)
    return best, out


def probe(model: Any, tokenizer: Any, kind: str, device: torch.device, *, allow_int8: bool = True) -> ProbeResult:
    """Time fp32, bf16 and int8 on :data:`PROBE_TEXTS` and pick (see the module docstring)."""
    head = model.get_output_embeddings()
    n_params = sum(p.numel() for p in model.parameters())
    if device.type == "cuda":
        return ProbeResult("bf16", "CUDA: bf16 autocast (tensor cores)")
    if n_params < MIN_PARAMS:
        return ProbeResult(
            "fp32",
            f"a small model ({n_params / 1e6:.1f}M parameters < {MIN_PARAMS // 10**6}M) "
            "gains nothing from reduced precision",
        )
    candidates = (
        ["fp32"]
        + (["bf16"] if bf16_supported(device) else [])
        + (["int8"] if allow_int8 and int8_supported(device) else [])
    )
    if candidates == ["fp32"]:
        return ProbeResult("fp32", "this CPU has no native bf16 (AVX-512 BF16 / AMX) and int8 is not offered")
    kwargs = _probe_inputs(tokenizer, kind, device)
    real = kwargs["attention_mask"].bool()
    seconds: dict[str, float] = {}
    hidden: dict[str, torch.Tensor] = {}
    for precision in candidates:
        if precision == "int8":
            # A quantised copy (its own output layer kept in fp32); the caller's model stays as it is.
            twin = copy.deepcopy(model)
            twin_head = twin.get_output_embeddings()
            quantize_int8(twin, keep=twin_head)
            seconds[precision], hidden[precision] = _timed(
                lambda m=twin, h=twin_head: _hidden(m, h, kwargs, "fp32", device)  # type: ignore[misc]
            )
            del twin
        else:
            seconds[precision], hidden[precision] = _timed(lambda p=precision: _hidden(model, head, kwargs, p, device))  # type: ignore[misc]
    # Predictions: the argmax over the whole vocabulary at every real position, each precision's
    # hidden states through the output layer as that precision's scoring applies it.
    with torch.inference_mode():

        def predictions(precision: str) -> torch.Tensor:
            x = hidden[precision][real]
            with autocast("bf16" if precision == "bf16" else "fp32", device):
                return head(x).float().argmax(-1)

        reference = predictions("fp32")
        agreement = {p: float((predictions(p) == reference).float().mean()) for p in candidates if p != "fp32"}
    agreement["fp32"] = 1.0
    gain = {p: seconds["fp32"] / seconds[p] for p in candidates}
    rejected = {
        p: (
            f"{agreement[p]:.1%} same predictions < {AGREEMENT:.0%}"
            if agreement[p] < AGREEMENT
            else f"only {gain[p]:.2f}x faster < {MIN_GAIN}x"
        )
        for p in candidates
        if p != "fp32" and (agreement[p] < AGREEMENT or gain[p] < MIN_GAIN)
    }
    choice = min((p for p in candidates if p not in rejected), key=lambda p: seconds[p])
    timing = ", ".join(f"{p} {gain[p]:.2f}x" for p in candidates if p != "fp32")
    agrees = ", ".join(f"{p} {agreement[p]:.1%}" for p in candidates if p != "fp32")
    why = (
        f"probe of {int(real.sum())} next-token predictions: speed vs fp32 {timing}; same predictions {agrees}"
        + "".join(f"; {p} rejected ({r})" for p, r in rejected.items())
    )
    return ProbeResult(choice, why, seconds, agreement, int(real.sum()))


def _machine() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def probe_key(model: Any, kind: str, allow_int8: bool) -> str:
    """What a probe's outcome depends on: the model (class, config and a sample of its weights), the
    CPU, torch and the thread count."""
    first = next(iter(model.parameters()))
    sample = first.detach().flatten()[:4096].float().cpu().numpy().tobytes()
    config = model.config.to_json_string(use_diff=True) if hasattr(model, "config") else ""
    parts = [
        type(model).__name__,
        config,
        hashlib.sha256(sample).hexdigest(),
        kind,
        str(allow_int8),
        _machine(),
        torch.__version__,
        str(torch.get_num_threads()),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def resolve_auto(
    model: nn.Module, tokenizer: Any, kind: str, device: torch.device, *, allow_int8: bool = True, remember: bool = True
) -> ProbeResult:
    """``auto``'s precision: remembered from an earlier probe with the same key, else probed now."""
    if device.type == "cuda" or sum(p.numel() for p in model.parameters()) < MIN_PARAMS:
        return probe(model, tokenizer, kind, device, allow_int8=allow_int8)
    path = None
    if remember:
        from ..cache import cache_dir

        path = cache_dir("precision") / f"{probe_key(model, kind, allow_int8)}.json"
        if path.exists():
            try:
                data = json.loads(path.read_text())
                result = ProbeResult(**data)
                if result.choice in PRECISIONS:
                    result.reason = f"remembered from an earlier probe on this machine ({result.reason})"
                    return result
            except (ValueError, TypeError):
                pass
    result = probe(model, tokenizer, kind, device, allow_int8=allow_int8)
    if path is not None:
        from ..io import write_json_atomic

        write_json_atomic(path, asdict(result))
    return result
