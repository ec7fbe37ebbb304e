"""Delta modules: small trainable pieces that change a frozen backbone without editing its code.

Module-side deltas (LoRA, adapter, BitFit, LayerNorm tuning) hook one backbone module with
``register_forward_hook`` and add their contribution to its output; removing the hook restores the
backbone exactly. Input-side deltas (prefix-tuning, soft prompts) edit the model's keyword arguments
through the harness's ``input_hooks``. Every delta multiplies its contribution by an optional
``gate`` (a callable returning a scalar tensor): S3Delta's switches.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import AutoPromptError

Gate = Callable[[], torch.Tensor]


def module_dim(module: nn.Module, fallback: int | None = None) -> int:
    """Size of a module's output features: a Linear's ``out_features``, a norm's weight length."""
    if isinstance(module, nn.Linear):
        return module.out_features
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 1:
        return int(weight.shape[0])
    for name in ("out_features", "nf", "normalized_shape", "dim", "hidden_size"):  # nf: GPT-2's Conv1D
        value = getattr(module, name, None)
        if isinstance(value, int):
            return value
        if isinstance(value, (tuple, list)) and len(value) == 1:
            return int(value[0])
    if fallback is None:
        raise AutoPromptError(f"cannot tell the output size of {type(module).__name__}; it takes no delta of this kind")
    return fallback


def is_norm(module: nn.Module) -> bool:
    """LayerNorm, RMSNorm and the models' own variants (by class name: they share no base class)."""
    return isinstance(module, nn.LayerNorm) or "norm" in type(module).__name__.lower()


def _split_output(output: Any) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """The hidden-state tensor of a module's output and a function that puts a new one back."""
    if isinstance(output, torch.Tensor):
        return output, lambda h: h
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return output[0], lambda h: (h, *output[1:])
    raise AutoPromptError(f"a delta cannot read this module's output ({type(output).__name__})")


class DeltaModule(nn.Module):
    """Base of every delta: ``attach`` to a target, ``detach``, an optional gate."""

    kind: ClassVar[str] = ""
    input_side: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.gate: Gate | None = None
        self._handle: Any = None

    def options(self) -> dict[str, Any]:
        """Hyperparameters that rebuild this module (saved in the structure JSON)."""
        return {}

    @property
    def attached(self) -> bool:
        return self._handle is not None

    def attach(self, target: Any) -> None:
        if self._handle is not None:
            raise AutoPromptError(f"this {self.kind} delta is already attached; detach it first")
        self._handle = self._attach(target)

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _attach(self, target: Any) -> Any:
        raise NotImplementedError

    def _scale(self, value: torch.Tensor) -> torch.Tensor:
        return value if self.gate is None else value * self.gate().to(value.dtype)


class ModuleDelta(DeltaModule):
    """A delta that hooks one backbone module's forward output."""

    def _attach(self, target: nn.Module) -> Any:
        return target.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> Any:
        hidden, put_back = _split_output(output)
        return put_back(hidden + self._scale(self.delta(inputs[0] if inputs else None, hidden)).to(hidden.dtype))

    def delta(self, x: torch.Tensor | None, h: torch.Tensor) -> torch.Tensor:
        """What is added to the module's output ``h`` (``x`` is its input)."""
        raise NotImplementedError


class LoRA(ModuleDelta):
    """``W x + (alpha / r) · B A x`` on a Linear; A Kaiming-uniform and B zero, as PEFT initialises them."""

    kind = "lora"

    def __init__(self, in_features: int, out_features: int, r: int = 8, alpha: float | None = None) -> None:
        super().__init__()
        if r < 1:
            raise AutoPromptError(f"LoRA rank r must be at least 1, got {r}")
        self.r = r
        self.alpha = float(alpha if alpha is not None else r)
        self.lora_A = nn.Parameter(torch.empty(r, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    @classmethod
    def for_module(cls, module: nn.Module, r: int = 8, alpha: float | None = None) -> LoRA:
        if not isinstance(module, nn.Linear):
            raise AutoPromptError(f"LoRA needs a Linear layer, not {type(module).__name__}")
        return cls(module.in_features, module.out_features, r, alpha)

    def options(self) -> dict[str, Any]:
        return {"r": self.r, "alpha": self.alpha}

    def delta(self, x: torch.Tensor | None, h: torch.Tensor) -> torch.Tensor:
        assert x is not None
        return (x.to(self.lora_A.dtype) @ self.lora_A.T @ self.lora_B.T) * (self.alpha / self.r)


class Adapter(ModuleDelta):
    """Bottleneck adapter ``h ← h + f(h W_down + b) W_up + c`` (Houlsby); ``W_up`` zero so it starts as identity."""

    kind = "adapter"

    def __init__(self, dim: int, bottleneck: int = 16) -> None:
        super().__init__()
        if bottleneck < 1:
            raise AutoPromptError(f"adapter bottleneck must be at least 1, got {bottleneck}")
        self.bottleneck = bottleneck
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.normal_(self.down.weight, std=1e-2)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    @classmethod
    def for_module(cls, module: nn.Module, bottleneck: int = 16, dim: int | None = None) -> Adapter:
        return cls(module_dim(module, dim), bottleneck)

    def options(self) -> dict[str, Any]:
        return {"bottleneck": self.bottleneck}

    def delta(self, x: torch.Tensor | None, h: torch.Tensor) -> torch.Tensor:
        return self.up(nn.functional.gelu(self.down(h.to(self.down.weight.dtype))))


class BitFit(ModuleDelta):
    """A trainable bias added to a module's output (zero at start).

    For layers that already have a bias this is the same as tuning it; models without biases
    (Gemma, T5, LLaMA) get one — as OpenDelta and S3Delta do.
    """

    kind = "bitfit"

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(dim))

    @classmethod
    def for_module(cls, module: nn.Module, dim: int | None = None) -> BitFit:
        return cls(module_dim(module, dim))

    def delta(self, x: torch.Tensor | None, h: torch.Tensor) -> torch.Tensor:
        return self.bias


class LNTuning(ModuleDelta):
    """LayerNorm tuning: the norm's gain ``g`` becomes ``g · (1 + s)`` (and its bias ``b + d`` if it has one).

    Written on the output, ``y' = y + s · (y − b) [+ d]``, so it works for every norm variant
    (Gemma's ``1 + w`` gain, RMSNorm without bias) and detaches exactly.
    """

    kind = "ln"
    _norm_bias: torch.Tensor | None

    def __init__(self, dim: int, has_bias: bool = False) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(dim))
        self.shift = nn.Parameter(torch.zeros(dim)) if has_bias else None
        self.__dict__["_norm_bias"] = None

    @classmethod
    def for_module(cls, module: nn.Module) -> LNTuning:
        if not is_norm(module):
            raise AutoPromptError(f"LayerNorm tuning needs a normalisation layer, not {type(module).__name__}")
        bias = getattr(module, "bias", None)
        return cls(module_dim(module), has_bias=isinstance(bias, torch.Tensor))

    def options(self) -> dict[str, Any]:
        return {"has_bias": self.shift is not None}

    def _attach(self, target: nn.Module) -> Any:
        bias = getattr(target, "bias", None)
        # Kept out of nn.Module's registry: the backbone's bias is read here, never trained or saved.
        self.__dict__["_norm_bias"] = bias if isinstance(bias, torch.Tensor) else None
        return super()._attach(target)

    def delta(self, x: torch.Tensor | None, h: torch.Tensor) -> torch.Tensor:
        centred = h if self._norm_bias is None else h - self._norm_bias.detach()
        out = centred.to(self.scale.dtype) * self.scale
        return out if self.shift is None else out + self.shift


class _HookHandle:
    """Removes a callable from a harness's ``input_hooks``."""

    def __init__(self, hooks: list[Any], fn: Any) -> None:
        self.hooks, self.fn = hooks, fn

    def remove(self) -> None:
        if self.fn in self.hooks:
            self.hooks.remove(self.fn)


class InputDelta(DeltaModule):
    """A delta that edits the model's inputs through ``Harness.input_hooks``."""

    input_side = True

    def _attach(self, target: Any) -> Any:
        hooks = getattr(target, "input_hooks", None)
        if hooks is None:
            raise AutoPromptError(f"{self.kind} is an input-side delta: attach it to a Harness, not a bare model")
        hooks.append(self._edit)
        return _HookHandle(hooks, self._edit)

    def _edit(self, kwargs: dict[str, Any], batch: list[Any]) -> None:
        raise NotImplementedError


class PrefixTuning(InputDelta):
    """Prefix-tuning (Li & Liang): ``num_tokens`` trainable key/value vectors prepended in every layer.

    The prefixes go in as a pre-filled KV cache (the public ``Cache`` API of transformers ≥ 4.36),
    as PEFT does; the attention mask is extended to cover them. Causal LMs only. Parameters:
    ``layers × 2 × kv_heads × num_tokens × head_dim``.
    """

    kind = "prefix"

    def __init__(self, layers: int, kv_heads: int, head_dim: int, num_tokens: int = 10, config: Any = None) -> None:
        super().__init__()
        if num_tokens < 1:
            raise AutoPromptError(f"prefix num_tokens must be at least 1, got {num_tokens}")
        self.num_tokens = num_tokens
        self.config = config
        self.prefix = nn.Parameter(torch.randn(layers, 2, kv_heads, num_tokens, head_dim) * 0.02)
        self._cache_key = "past_key_values"

    @classmethod
    def for_model(cls, model: nn.Module, num_tokens: int = 10) -> PrefixTuning:
        cfg: Any = model.config
        cfg = getattr(cfg, "get_text_config", lambda: cfg)()
        if getattr(model.config, "is_encoder_decoder", False):
            raise AutoPromptError("prefix-tuning here supports causal LMs (decoder-only models)")
        heads = cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        return cls(cfg.num_hidden_layers, kv_heads, head_dim, num_tokens, cfg)

    def options(self) -> dict[str, Any]:
        return {"num_tokens": self.num_tokens}

    def _attach(self, target: Any) -> Any:
        if getattr(target, "kind", "causal") != "causal":
            raise AutoPromptError("prefix-tuning here supports causal LMs (decoder-only models)")
        model = target.model
        if self.config is None:
            self.config = model.config
        # transformers 5.x renames ``past_key_values`` to ``cache``; older versions know only the former.
        self._cache_key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        return super()._attach(target)

    def _edit(self, kwargs: dict[str, Any], batch: list[Any]) -> None:
        from transformers import DynamicCache

        mask = kwargs["attention_mask"]
        b = mask.shape[0]
        prefix = self._scale(self.prefix)
        cache = DynamicCache(config=self.config)
        for layer in range(prefix.shape[0]):
            k = prefix[layer, 0][None].expand(b, -1, -1, -1)
            v = prefix[layer, 1][None].expand(b, -1, -1, -1)
            cache.update(k, v, layer)
        kwargs[self._cache_key] = cache
        kwargs["attention_mask"] = torch.cat([mask.new_ones(b, self.num_tokens), mask], dim=1)


class SoftPrompt(InputDelta):
    """Soft-prompt tuning: the embeddings of the template's ``{soft}`` tokens (P-tuning / prompt tuning style).

    Train with ``Harness.train(..., soft_embeddings=delta.embeddings)``; while attached, every
    harness pass (``evaluate`` included) uses them.
    """

    kind = "soft"

    def __init__(self, num_tokens: int, dim: int) -> None:
        super().__init__()
        if num_tokens < 1:
            raise AutoPromptError(f"a soft prompt needs at least 1 token, got {num_tokens}")
        self.num_tokens = num_tokens
        self.embeddings = nn.Parameter(torch.zeros(num_tokens, dim))
        self._harness: Any = None

    @classmethod
    def for_template(cls, harness: Any, template: Any) -> SoftPrompt:
        """One vector per ``{soft}`` token, initialised from the embeddings the template gives them."""
        from ..data import Example
        from ..prompts import as_template

        template = as_template(template)
        # The encoder puts each soft token's initial token id in the row (an init text may be
        # several tokens); read them from one encoded row.
        example = Example(text_a="x", label=-1, text_b="x", meta={f: "x" for f in template.fields})
        row = harness.encoder.rows(0, harness.encoder.encode(template, example), None)[0]
        if not row.soft_positions:
            raise AutoPromptError(f"template {template.text!r} has no {{soft}} token to tune")
        emb = harness.model.get_input_embeddings()
        delta = cls(len(row.soft_positions), emb.weight.shape[1])
        with torch.no_grad():
            ids = torch.tensor([row.input_ids[p] for p in row.soft_positions], device=emb.weight.device)
            delta.embeddings.copy_(emb(ids).float().cpu())
        return delta

    def options(self) -> dict[str, Any]:
        return {"num_tokens": self.num_tokens}

    def _edit(self, kwargs: dict[str, Any], batch: list[Any]) -> None:
        if not any(r.soft_positions for r in batch):
            return
        if "inputs_embeds" not in kwargs:
            kwargs["inputs_embeds"] = self._harness.model.get_input_embeddings()(kwargs.pop("input_ids"))
        kwargs["inputs_embeds"] = self._harness.put_soft_embeddings(
            kwargs["inputs_embeds"], batch, self._scale(self.embeddings)
        )

    def _attach(self, target: Any) -> Any:
        self._harness = target
        return super()._attach(target)

    def detach(self) -> None:
        super().detach()
        self._harness = None


MODULE_KINDS: dict[str, type[DeltaModule]] = {
    cls.kind: cls for cls in (LoRA, Adapter, BitFit, LNTuning, PrefixTuning, SoftPrompt)
}
