"""A delta structure on a backbone: which delta modules sit where, attach/detach, save/load, views, export.

A structure is a list of entries ``{"kind", "target", **options}`` — one delta module on one
backbone module (``target`` is the module's name from ``model.named_modules()``; empty for
input-side deltas). :class:`DeltaSpec` expands module-name patterns into entries;
:class:`Delta` holds the modules, hooks them onto a backbone (a :class:`~autoprompt_kit.Harness`
or a bare model), and writes the kit's JSON + safetensors or a PEFT LoRA adapter.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import AutoPromptError
from .modules import (
    MODULE_KINDS,
    Adapter,
    BitFit,
    DeltaModule,
    LNTuning,
    LoRA,
    PrefixTuning,
    SoftPrompt,
    is_norm,
    module_dim,
)

logger = logging.getLogger(__name__)

FORMAT = "autoprompt-kit-delta"
FORMAT_VERSION = 1
STRUCTURE_FILE = "delta.json"
WEIGHTS_FILE = "delta.safetensors"
INPUT_KINDS = ("prefix", "soft")
SHORT = {"lora": "L", "adapter": "A", "bitfit": "B", "ln": "N", "prefix": "P", "soft": "S"}


def backbone_of(target: Any) -> Any:
    """The model of a Harness (or the model itself)."""
    model = getattr(target, "model", None)
    if isinstance(model, nn.Module) and not isinstance(target, nn.Module):
        return model
    if isinstance(target, nn.Module):
        return target
    raise AutoPromptError(f"expected a Harness or a torch model, got {type(target).__name__}")


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def name_matches(name: str, pattern: str) -> bool:
    """A module name matches a pattern when it is the name, ends with ``.pattern``, or fully matches it as a regex."""
    if name == pattern or name.endswith("." + pattern):
        return True
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def check_patterns(patterns: Sequence[str], what: str) -> None:
    """Each module pattern must compile as a regular expression (a typo there would otherwise read as
    "matches no module")."""
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise AutoPromptError(f"{what}: pattern {pattern!r} is not a valid regular expression ({exc})") from None


@dataclass
class DeltaSpec:
    """One kind of delta on every module whose name matches ``targets``."""

    kind: str = field(default="lora", metadata={"help": "lora, adapter, bitfit, ln, prefix or soft"})
    targets: list[str] = field(
        default_factory=list,
        metadata={
            "help": "module-name patterns: a name, a suffix (q_proj, self_attn.o_proj) or a full regex; "
            "not used by prefix and soft"
        },
    )
    r: int = field(default=8, metadata={"help": "LoRA rank"})
    alpha: float | None = field(default=None, metadata={"help": "LoRA alpha (scaling alpha/r); default r"})
    bottleneck: int = field(default=16, metadata={"help": "adapter bottleneck size"})
    num_tokens: int = field(default=10, metadata={"help": "prefix length (prefix-tuning)"})
    template: str | None = field(default=None, metadata={"help": "template whose {soft} tokens a soft prompt tunes"})

    def __post_init__(self) -> None:
        if self.kind not in MODULE_KINDS:
            raise AutoPromptError(f"unknown delta kind {self.kind!r}; choose one of {', '.join(MODULE_KINDS)}")
        if isinstance(self.targets, str):
            self.targets = [self.targets]
        check_patterns(self.targets, f"{self.kind} targets")
        if self.kind not in INPUT_KINDS and not self.targets:
            raise AutoPromptError(f"a {self.kind} delta needs target module patterns (e.g. ['q_proj', 'v_proj'])")
        if self.kind == "soft" and not self.template:
            raise AutoPromptError("a soft-prompt delta needs the template whose {soft} tokens it tunes")
        for name in ("r", "bottleneck", "num_tokens"):
            if getattr(self, name) < 1:
                raise AutoPromptError(f"delta {name} must be at least 1, got {getattr(self, name)}")

    def options(self) -> dict[str, Any]:
        by_kind: dict[str, dict[str, Any]] = {
            "lora": {"r": self.r, "alpha": self.alpha},
            "adapter": {"bottleneck": self.bottleneck},
            "prefix": {"num_tokens": self.num_tokens},
        }
        return by_kind.get(self.kind, {})

    def entries(self, target: Any) -> list[dict[str, Any]]:
        """The concrete entries this spec puts on a backbone; a clear error when a pattern matches nothing."""
        if self.kind in INPUT_KINDS:
            return [{"kind": self.kind, "target": "", **self.options()}]
        model = backbone_of(target)
        names = [n for n, _ in model.named_modules() if n]
        modules = dict(model.named_modules())
        out: list[dict[str, Any]] = []
        for pattern in self.targets:
            hits = [n for n in names if name_matches(n, pattern)]
            if not hits:
                raise AutoPromptError(
                    f"{self.kind} pattern {pattern!r} matches no module of {type(model).__name__} "
                    f"(module names look like {names[min(len(names) - 1, 5)]!r})"
                )
            fitting = [n for n in hits if _fits(self.kind, modules[n])]
            if not fitting:
                raise AutoPromptError(
                    f"{self.kind} pattern {pattern!r} matches only modules that cannot take it "
                    f"(e.g. {hits[0]!r}: {type(modules[hits[0]]).__name__})"
                )
            out.extend({"kind": self.kind, "target": n, **self.options()} for n in fitting)
        seen, unique = set(), []
        for e in out:
            if e["target"] not in seen:
                seen.add(e["target"])
                unique.append(e)
        return unique


#: Attention query / value projections by naming convention (PEFT's usual LoRA targets): LLaMA /
#: Gemma / Mistral, BERT / RoBERTa, T5, DistilBERT.
LORA_DEFAULT_TARGETS = (("q_proj", "v_proj"), ("query", "value"), ("q", "v"), ("q_lin", "v_lin"))


def default_lora_targets(target: Any) -> list[str]:
    """The attention query/value Linear layers of this backbone, by the usual names; a clear error otherwise."""
    model = backbone_of(target)
    linear_leaves = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n and isinstance(m, nn.Linear)}
    for names in LORA_DEFAULT_TARGETS:
        if all(x in linear_leaves for x in names):
            return list(names)
    example = sorted(linear_leaves)[:4] or ["(none)"]
    raise AutoPromptError(
        f"{type(model).__name__} has no q_proj/v_proj-style attention Linear layers for LoRA; "
        f"name the targets (its Linear layers end in {', '.join(example)})"
    )


def _fits(kind: str, module: nn.Module) -> bool:
    if kind == "lora":
        return isinstance(module, nn.Linear)
    if kind == "ln":
        return is_norm(module)
    # Adapters and BitFit read a module's hidden-state output: layers with a known output size, or blocks.
    try:
        module_dim(module)
        return True
    except AutoPromptError:
        return len(list(module.children())) > 0


def build_module(entry: dict[str, Any], target: Any) -> DeltaModule:
    """A fresh delta module for one structure entry on this backbone."""
    kind = entry.get("kind")
    model = backbone_of(target)
    hidden = getattr(getattr(model.config, "get_text_config", lambda: model.config)(), "hidden_size", None)
    if kind in ("prefix", "soft"):
        if kind == "prefix":
            return PrefixTuning.for_model(model, int(entry.get("num_tokens", 10)))
        return SoftPrompt(int(entry["num_tokens"]), model.get_input_embeddings().weight.shape[1])
    modules = dict(model.named_modules())
    name = entry.get("target", "")
    if name not in modules:
        raise AutoPromptError(f"the backbone has no module {name!r} (is this delta for another model?)")
    module = modules[name]
    if kind == "lora":
        return LoRA.for_module(module, int(entry.get("r", 8)), entry.get("alpha"))
    if kind == "adapter":
        return Adapter.for_module(module, int(entry.get("bottleneck", 16)), hidden)
    if kind == "bitfit":
        return BitFit.for_module(module, hidden)
    if kind == "ln":
        return LNTuning.for_module(module)
    raise AutoPromptError(f"unknown delta kind {kind!r}; choose one of {', '.join(MODULE_KINDS)}")


class Delta(nn.Module):
    """A set of delta modules for one backbone.

    Build it with :meth:`from_specs` (patterns) or :meth:`from_structure` (entries), then
    :meth:`attach` it to a Harness (or model): the backbone is frozen and the deltas hooked in;
    :meth:`detach` removes every hook and restores the backbone's ``requires_grad`` flags.
    """

    def __init__(self, entries: Sequence[dict[str, Any]], modules: Sequence[DeltaModule]) -> None:
        super().__init__()
        if len(entries) != len(modules):
            raise AutoPromptError("a delta needs one module per structure entry")
        if not entries:
            raise AutoPromptError("a delta needs at least one module")
        self.entries = [dict(e) for e in entries]
        self.deltas: list[DeltaModule] = nn.ModuleList(modules)  # type: ignore[assignment]  # a list of them to readers
        self._frozen: list[tuple[nn.Parameter, bool]] | None = None
        self._target: Any = None

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def from_specs(cls, target: Any, specs: Iterable[DeltaSpec | dict[str, Any]]) -> Delta:
        entries: list[dict[str, Any]] = []
        soft_templates: dict[int, str] = {}
        for spec in specs:
            spec = spec if isinstance(spec, DeltaSpec) else DeltaSpec(**spec)
            if spec.kind == "soft":
                soft_templates[len(entries)] = str(spec.template)
            entries.extend(spec.entries(target))
        modules: list[DeltaModule] = []
        for i, entry in enumerate(entries):
            if entry["kind"] == "soft":
                soft = SoftPrompt.for_template(target, soft_templates[i])
                entry["num_tokens"] = soft.num_tokens
                modules.append(soft)
            else:
                modules.append(build_module(entry, target))
        return cls(entries, modules)

    @classmethod
    def from_structure(cls, target: Any, structure: Sequence[dict[str, Any]]) -> Delta:
        return cls(structure, [build_module(e, target) for e in structure])

    # -- attaching --------------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        return self._target is not None

    def attach(self, target: Any, freeze: bool = True) -> Delta:
        """Hook every delta module onto ``target``'s backbone; freeze the backbone (``freeze``)."""
        if self._target is not None:
            raise AutoPromptError("this delta is already attached; detach it first")
        model = backbone_of(target)
        modules = dict(model.named_modules())
        param = next(model.parameters())
        self.to(param.device)
        done: list[DeltaModule] = []
        try:
            for entry, delta in zip(self.entries, self.deltas):
                if entry["kind"] in INPUT_KINDS:
                    delta.attach(target)
                else:
                    if entry["target"] not in modules:
                        raise AutoPromptError(f"the backbone has no module {entry['target']!r}")
                    delta.attach(modules[entry["target"]])
                done.append(delta)
        except BaseException:
            for d in done:
                d.detach()
            raise
        if freeze:
            self._frozen = [(p, p.requires_grad) for p in model.parameters()]
            for p, _ in self._frozen:
                p.requires_grad_(False)
        for p in self.parameters():
            p.requires_grad_(True)
        self._target = target
        return self

    def detach(self) -> Delta:
        """Remove every hook; the backbone computes exactly what it did before."""
        for delta in self.deltas:
            delta.detach()
        if self._frozen is not None:
            for p, flag in self._frozen:
                p.requires_grad_(flag)
            self._frozen = None
        self._target = None
        return self

    def __enter__(self) -> Delta:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    # -- sizes ------------------------------------------------------------------------------
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def module_parameters(self) -> list[int]:
        return [sum(p.numel() for p in d.parameters()) for d in self.deltas]

    def fraction(self, target: Any) -> float:
        """Delta parameters as a fraction of the backbone's parameters."""
        return self.num_parameters() / count_parameters(backbone_of(target))

    def soft_embeddings(self) -> torch.Tensor | None:
        """The soft-prompt embeddings (for ``Harness.train(soft_embeddings=...)``), if this delta has any."""
        for d in self.deltas:
            if isinstance(d, SoftPrompt):
                return d.embeddings
        return None

    def structure(self) -> list[dict[str, Any]]:
        return [dict(e) for e in self.entries]

    # -- files ------------------------------------------------------------------------------
    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write ``delta.json`` (structure) and ``delta.safetensors`` (only the delta's weights) into a folder."""
        from safetensors.torch import save_file

        from ..io import write_json_atomic

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(path / WEIGHTS_FILE))
        doc = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "parameters": self.num_parameters(),
            "modules": self.structure(),
            **(extra or {}),
        }
        if self._target is not None:
            doc["backbone_parameters"] = count_parameters(backbone_of(self._target))
        write_json_atomic(path / STRUCTURE_FILE, doc)
        return path

    @classmethod
    def load(cls, path: str | Path, target: Any) -> Delta:
        """Rebuild a saved delta for ``target``'s backbone (not attached yet)."""
        from safetensors.torch import load_file

        path = Path(path)
        doc = read_structure(path)
        delta = cls.from_structure(target, doc["modules"])
        weights = path / WEIGHTS_FILE
        if not weights.exists():
            raise AutoPromptError(f"{str(path)!r} has no {WEIGHTS_FILE}")
        state = load_file(str(weights))
        missing, unexpected = delta.load_state_dict(state, strict=False)
        if missing:
            raise AutoPromptError(f"{str(weights)!r} lacks weights for {missing[:3]} (a different structure?)")
        if unexpected:
            logger.warning("ignoring unknown weights in %s: %s", weights, ", ".join(unexpected[:5]))
        return delta

    def export_peft(self, path: str | Path, target: Any, base_model: str | None = None) -> Path:
        """Write a PEFT LoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``).

        ``peft.PeftModel.from_pretrained(model, path)`` loads it and predicts as this delta does.
        Only LoRA-only structures are PEFT-expressible here; others go through :meth:`save`.
        """
        from peft import LoraConfig
        from safetensors.torch import save_file

        kinds = sorted({e["kind"] for e in self.entries})
        if kinds != ["lora"]:
            raise AutoPromptError(
                f"only LoRA-only structures export to PEFT; this one has {', '.join(kinds)} "
                "(save it with Delta.save instead)"
            )
        loras = [d for d in self.deltas if isinstance(d, LoRA)]
        r, alpha = loras[0].r, loras[0].alpha
        names = [e["target"] for e in self.entries]
        # Full module names as ``^name$`` regexes: PEFT's list form would also match longer names ending in them.
        rank = {f"^{re.escape(n)}$": d.r for n, d in zip(names, loras) if d.r != r}
        alphas = {f"^{re.escape(n)}$": d.alpha for n, d in zip(names, loras) if d.alpha != alpha}
        kind = getattr(target, "kind", None)
        # PEFT annotates lora_alpha as int but scales by any number; a searched alpha may be fractional.
        config = LoraConfig(
            r=r,
            lora_alpha=alpha,  # type: ignore[arg-type]
            lora_dropout=0.0,
            bias="none",
            target_modules=names,
            rank_pattern=rank,
            alpha_pattern=alphas,
            task_type={"causal": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM"}.get(kind or ""),
            base_model_name_or_path=base_model,
        )
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(str(path))
        tensors = {}
        for name, d in zip(names, loras):
            tensors[f"base_model.model.{name}.lora_A.weight"] = d.lora_A.detach().float().cpu().contiguous()
            tensors[f"base_model.model.{name}.lora_B.weight"] = d.lora_B.detach().float().cpu().contiguous()
        save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
        return path

    # -- views ------------------------------------------------------------------------------
    def table(self, target: Any | None = None) -> str:
        """Text table of which layers and positions are switched on (L LoRA, A adapter, B BitFit, N LN)."""
        return structure_table(
            self.entries,
            self.module_parameters(),
            count_parameters(backbone_of(target)) if target is not None else None,
        )


def read_structure(path: str | Path) -> dict[str, Any]:
    from ..io import load_json

    path = Path(path)
    file = path / STRUCTURE_FILE if path.is_dir() else path
    if not file.exists():
        raise AutoPromptError(f"no delta structure at {str(file)!r}")
    doc = load_json(file, "delta structure")
    if (
        not isinstance(doc, dict)
        or doc.get("format") != FORMAT
        or not isinstance(doc.get("modules"), list)
        or not all(isinstance(m, dict) and isinstance(m.get("kind"), str) for m in doc["modules"])
    ):
        raise AutoPromptError(f"{str(file)!r} is not an autoprompt-kit delta structure")
    return doc


_LAYER = re.compile(r"^(.*?)\.(\d+)\.(.+)$")


def structure_table(
    entries: Sequence[dict[str, Any]], sizes: Sequence[int] | None = None, backbone_params: int | None = None
) -> str:
    """Positions (``self_attn.q_proj``…) as rows, layers as columns, the kinds switched on in each cell."""
    cells: dict[tuple[int, str], str] = {}
    positions: list[str] = []  # in the order the structure lists them (the model's order)
    other: list[str] = []
    for e in entries:
        m = _LAYER.match(e.get("target", ""))
        if not m:
            other.append(f"{e['kind']}" + (f" on {e['target']}" if e.get("target") else ""))
            continue
        key = (int(m.group(2)), m.group(3))
        if key[1] not in positions:
            positions.append(key[1])
        cells[key] = "".join(sorted(set(cells.get(key, "") + SHORT[e["kind"]])))
    lines = []
    if cells:
        layers = range(min(k[0] for k in cells), max(k[0] for k in cells) + 1)
        width = max(len(p) for p in positions)
        col = max(2, max(len(v) for v in cells.values()))
        lines.append(f"{'layer':<{width}} " + " ".join(f"{i:>{col}}" for i in layers))
        for p in positions:
            lines.append(f"{p:<{width}} " + " ".join(f"{cells.get((i, p), '.'):>{col}}" for i in layers))
        lines.append("(L LoRA, A adapter, B BitFit, N LayerNorm tuning, . off)")
    if other:
        lines.append("also: " + ", ".join(other))
    if sizes is not None:
        total = int(sum(sizes))
        frac = f" = {100 * total / backbone_params:.4f}% of {backbone_params:,}" if backbone_params else ""
        counts: dict[str, int] = {}
        for e, s in zip(entries, sizes):
            counts[e["kind"]] = counts.get(e["kind"], 0) + int(s)
        lines.append(
            f"{len(entries)} modules, {total:,} trainable parameters{frac} ("
            + ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()))
            + ")"
        )
    return "\n".join(lines)


def structure_view(target: Any, delta: Delta | None = None, max_depth: int = 6) -> str:
    """The backbone's module tree with parameter counts; attached deltas are marked ``+kind (n)``.

    Identical sibling subtrees (a stack of layers) are printed once as ``layers.0-17``, as OpenDelta's
    visualisation does.
    """
    model = backbone_of(target)
    marks: dict[str, list[str]] = {}
    if delta is not None:
        for e, size in zip(delta.entries, delta.module_parameters()):
            marks.setdefault(e.get("target", ""), []).append(f"+{e['kind']} ({size:,})")

    def render(module: nn.Module, prefix: str, depth: int) -> list[str]:
        lines = []
        children = list(module.named_children())
        i = 0
        while i < len(children):
            name, child = children[i]
            full = f"{prefix}.{name}" if prefix else name
            body = _node(child, full, depth)
            j = i + 1
            # Merge a run of siblings whose subtrees render the same (numbered layers).
            while (
                j < len(children)
                and name.isdigit()
                and children[j][0].isdigit()
                and _node(children[j][1], f"{prefix}.{children[j][0]}" if prefix else children[j][0], depth) == body
            ):
                j += 1
            label = name if j == i + 1 else f"{name}-{children[j - 1][0]}"
            n = count_parameters(child)
            head = "  " * depth + f"{label}: {type(child).__name__}" + (f" ({n:,})" if n else "")
            lines.append(head + ("  " + " ".join(marks.get(full, [])) if marks.get(full) else ""))
            lines.extend(body)
            i = j
        return lines

    def _node(child: nn.Module, full: str, depth: int) -> list[str]:
        if depth + 1 >= max_depth:
            return []
        return render(child, full, depth + 1)

    top = f"{type(model).__name__} ({count_parameters(model):,} parameters)"
    if marks.get(""):
        top += "  " + " ".join(marks[""])
    lines = [top, *render(model, "", 1)]
    if delta is not None:
        lines.append(
            f"delta: {delta.num_parameters():,} trainable parameters "
            f"({100 * delta.num_parameters() / count_parameters(model):.4f}% of the backbone)"
        )
    return "\n".join(lines)


class DeltaLibrary:
    """Several deltas (one per task) on one backbone; :meth:`use` switches which one is attached.

    The backbone is loaded once; switching detaches the current delta (exact restore) and attaches
    another — serving several tasks from one model.
    """

    def __init__(self, target: Any) -> None:
        self.target = target
        self.deltas: dict[str, Delta] = {}
        self.active: str | None = None

    def add(self, name: str, delta: Delta | str | Path) -> Delta:
        if not isinstance(delta, Delta):
            delta = Delta.load(delta, self.target)
        self.deltas[name] = delta
        return delta

    def use(self, name: str | None) -> Delta | None:
        """Attach the named delta (``None``: the bare backbone)."""
        if name is not None and name not in self.deltas:
            raise AutoPromptError(f"no delta named {name!r}; have {', '.join(sorted(self.deltas)) or 'none'}")
        if self.active is not None:
            self.deltas[self.active].detach()
            self.active = None
        if name is None:
            return None
        delta = self.deltas[name].attach(self.target, freeze=False)
        self.active = name
        return delta


__all__ = [
    "Adapter",
    "BitFit",
    "Delta",
    "DeltaLibrary",
    "DeltaSpec",
    "LNTuning",
    "LoRA",
    "PrefixTuning",
    "SoftPrompt",
    "count_parameters",
    "read_structure",
    "structure_table",
    "structure_view",
]
