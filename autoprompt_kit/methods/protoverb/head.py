"""The ProtoVerb head: standardised mask states, a projection and K prototypes per class, scored
by cosine (alone or with the manual verbalizer); a :class:`~autoprompt_kit.artifact.Head` of kind ``protoverb``."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from ...artifact import HEADS
from ...errors import AutoPromptError
from ...prompts import Template, Verbalizer, as_template

if TYPE_CHECKING:
    from ...data import Split
    from ...harness import EvalResult, Harness

INFERENCE = ("proto", "combined")
SMALL_CLASS = ("reduce", "error")


@dataclass
class ProtoSettings:
    """One ProtoVerb head's training settings."""

    proj_dim: int = 64
    prototypes_per_class: int = 1
    temperature: float = 0.1
    instance_weight: float = 1.0
    steps: int = 100
    lr: float = 0.01
    batch_size: int = 64
    inference: str = "combined"
    manual_weight: float = 1.0
    on_small_class: str = "reduce"

    def __post_init__(self) -> None:
        if self.proj_dim < 1 or self.prototypes_per_class < 1 or self.steps < 1 or self.batch_size < 2:
            raise AutoPromptError("proj_dim, prototypes_per_class and steps must be >= 1, batch_size >= 2")
        if self.temperature <= 0 or self.lr <= 0 or self.instance_weight < 0 or self.manual_weight < 0:
            raise AutoPromptError("temperature and lr must be > 0; instance_weight and manual_weight >= 0")
        if self.inference not in INFERENCE:
            raise AutoPromptError(f"inference must be one of {INFERENCE}, got {self.inference!r}")
        if self.on_small_class not in SMALL_CLASS:
            raise AutoPromptError(f"on_small_class must be one of {SMALL_CLASS}, got {self.on_small_class!r}")


class PrototypeHead(nn.Module):
    """Projection + prototypes; scores mask hidden states (optionally with a manual verbalizer)."""

    kind: ClassVar[str] = "protoverb"
    # Buffers (register_buffer), declared for readers and type checkers.
    prototype_labels: torch.Tensor
    input_mean: torch.Tensor
    input_std: torch.Tensor
    proto_mean: torch.Tensor
    proto_std: torch.Tensor
    manual_mean: torch.Tensor
    manual_std: torch.Tensor

    def __init__(
        self,
        hidden_size: int,
        proj_dim: int,
        prototype_labels: Sequence[int],
        num_classes: int,
        *,
        temperature: float = 0.1,
        inference: str = "combined",
        manual_weight: float = 1.0,
    ) -> None:
        super().__init__()
        labels = torch.tensor(list(prototype_labels), dtype=torch.long)
        if sorted(set(labels.tolist())) != list(range(num_classes)):
            raise AutoPromptError("every class needs at least one prototype")
        self.proj = nn.Linear(hidden_size, proj_dim, bias=False)
        nn.init.orthogonal_(self.proj.weight)
        self.prototypes = nn.Parameter(torch.randn(len(labels), proj_dim) * 0.01)
        self.register_buffer("prototype_labels", labels)
        self.register_buffer("input_mean", torch.zeros(hidden_size))
        self.register_buffer("input_std", torch.ones(hidden_size))
        # z-score statistics of proto scores and manual class log-probs on the training set (C,)
        for name in ("proto_mean", "manual_mean"):
            self.register_buffer(name, torch.zeros(num_classes))
        for name in ("proto_std", "manual_std"):
            self.register_buffer(name, torch.ones(num_classes))
        self.num_classes = num_classes
        self.temperature = temperature
        self.inference = inference
        self.manual_weight = manual_weight

    # -- scoring ------------------------------------------------------------------------------
    def embed(self, hidden: torch.Tensor) -> torch.Tensor:
        """Standardise, project, normalise: ``(N, proj_dim)`` unit vectors."""
        return nn.functional.normalize(self.proj((hidden.float() - self.input_mean) / self.input_std), dim=-1)

    def similarities(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(N, P)`` cosine of each projected instance to each prototype."""
        return self.embed(hidden) @ nn.functional.normalize(self.prototypes, dim=-1).T

    def proto_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(N, C)`` per class: log-sum-exp over its prototypes of cosine / temperature."""
        sims = self.similarities(hidden) / self.temperature
        out = torch.full((sims.shape[0], self.num_classes), float("-inf"), device=sims.device)
        for c in range(self.num_classes):
            out[:, c] = torch.logsumexp(sims[:, self.prototype_labels == c], dim=1)
        return out

    def class_logprobs(self, hidden: torch.Tensor, manual: torch.Tensor | None = None) -> torch.Tensor:
        """``(N, C)`` class log-probabilities: prototypes alone, or z-score-combined with ``manual``."""
        proto = self.proto_logits(hidden)
        if self.inference == "proto":
            return torch.log_softmax(proto, dim=1)
        if manual is None:
            raise AutoPromptError("combined ProtoVerb inference needs the manual verbalizer's class scores")
        z_proto = (proto - self.proto_mean) / self.proto_std
        z_manual = (manual.float() - self.manual_mean) / self.manual_std
        return torch.log_softmax((z_proto + self.manual_weight * z_manual) / (1 + self.manual_weight), dim=1)

    def fit_statistics(self, hidden: torch.Tensor, manual: torch.Tensor | None) -> None:
        """Store the training-set mean and sd of each class column (for ``combined`` z-scores)."""
        with torch.no_grad():
            proto = self.proto_logits(hidden)
            self.proto_mean.copy_(proto.mean(0))
            self.proto_std.copy_(proto.std(0).clamp_min(1e-6) if len(proto) > 1 else torch.ones_like(self.proto_std))
            if manual is not None:
                self.manual_mean.copy_(manual.float().mean(0))
                self.manual_std.copy_(
                    manual.float().std(0).clamp_min(1e-6) if len(manual) > 1 else torch.ones_like(self.manual_std)
                )

    def evaluate(
        self,
        harness: Harness,
        split: Split,
        template: Template | str,
        verbalizer: Verbalizer,
        label_names: Sequence[str] | None = None,
    ) -> EvalResult:
        """Accuracy / macro-F1 on a split: one harness pass (word scores + mask hidden states)."""
        from ...harness import EvalResult

        start = time.perf_counter()
        template = as_template(template)
        if label_names is not None:
            verbalizer.check_labels(label_names)
        out = harness.score(split, template, verbalizer, hidden=True)
        assert out.hidden is not None
        manual = verbalizer.class_logprobs(out.word_logprobs.float())
        with torch.no_grad():
            class_lp = self.class_logprobs(
                out.hidden.float().to(self.prototypes.device), manual.to(self.prototypes.device)
            )
        labels = np.array([e.label for e in split])
        return EvalResult.from_class_logprobs(
            class_lp,
            labels,
            word_logprobs=out.word_logprobs.float(),
            num_classes=self.num_classes,
            seconds=time.perf_counter() - start,
            template=template.display(),
            extra={"manual_class_logprobs": manual.cpu().numpy()},
        )

    # -- saving -------------------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        return {
            "hidden_size": self.proj.in_features,
            "proj_dim": self.proj.out_features,
            "prototype_labels": self.prototype_labels.tolist(),
            "num_classes": self.num_classes,
            "temperature": self.temperature,
            "inference": self.inference,
            "manual_weight": self.manual_weight,
        }

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}

    def head_config(self) -> dict[str, Any]:
        """The settings a saved prompt's manifest keeps (its tensors go to safetensors)."""
        return self._meta()

    def head_tensors(self) -> dict[str, torch.Tensor]:
        return self._tensors()

    @classmethod
    def from_saved(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> PrototypeHead:
        """Rebuild from :meth:`head_config` and :meth:`head_tensors` (a saved prompt's head)."""
        needed = (
            "hidden_size",
            "proj_dim",
            "prototype_labels",
            "num_classes",
            "temperature",
            "inference",
            "manual_weight",
        )
        missing = [k for k in needed if k not in config]
        if missing:
            raise AutoPromptError(f"the saved ProtoVerb head's config lacks {', '.join(missing)}")
        try:
            return cls._build(config, tensors)
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:
            raise AutoPromptError(
                f"the saved ProtoVerb head does not match its config: {str(exc).splitlines()[0][:200]}"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        """``{"kind": "protoverb", "config": …, "safetensors_b64": …}`` — JSON-safe, re-loadable."""
        from safetensors.torch import save

        return {
            "kind": "protoverb",
            "config": self._meta(),
            "safetensors_b64": base64.b64encode(save(self._tensors())).decode("ascii"),
        }

    @classmethod
    def _build(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> PrototypeHead:
        head = cls(
            meta["hidden_size"],
            meta["proj_dim"],
            meta["prototype_labels"],
            meta["num_classes"],
            temperature=meta["temperature"],
            inference=meta["inference"],
            manual_weight=meta["manual_weight"],
        )
        tensors = dict(tensors)
        tensors["prototype_labels"] = tensors["prototype_labels"].long()
        head.load_state_dict(tensors)
        return head

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrototypeHead:
        from safetensors.torch import load

        if data.get("kind") != "protoverb" or "config" not in data or "safetensors_b64" not in data:
            raise AutoPromptError("not a saved ProtoVerb head (needs kind: protoverb, config, safetensors_b64)")
        return cls._build(data["config"], load(base64.b64decode(data["safetensors_b64"])))

    def save(self, folder: str | Path) -> Path:
        """Write ``protoverb.json`` (settings) and ``protoverb.safetensors`` (weights) into ``folder``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file(self._tensors(), str(folder / "protoverb.safetensors"))
        (folder / "protoverb.json").write_text(json.dumps(self._meta(), indent=2, sort_keys=True))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> PrototypeHead:
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "protoverb.json").is_file() or not (folder / "protoverb.safetensors").is_file():
            raise AutoPromptError(f"{folder} has no protoverb.json + protoverb.safetensors")
        from ...io import load_json

        return cls._build(
            load_json(folder / "protoverb.json", "prototype head"), load_file(str(folder / "protoverb.safetensors"))
        )


HEADS[PrototypeHead.kind] = PrototypeHead
