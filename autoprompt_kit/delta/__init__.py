"""Delta tuning: small trainable modules on a frozen backbone, attached by module-name patterns.

from autoprompt_kit.delta import Delta, DeltaSpec, DeltaState

delta = Delta.from_specs(harness, [DeltaSpec("lora", ["q_proj", "v_proj"], r=8)]).attach(harness)
harness.train(task.train, template, verbalizer, delta.parameters(), lr=1e-3)
delta.save("runs/my-delta")            # delta.json + delta.safetensors (the delta only)
delta.detach()                         # the backbone is exactly as before
prompt.with_state(DeltaState.of(delta))  # a found prompt that carries it (saved, re-attached)
"""

from .modules import Adapter, BitFit, DeltaModule, LNTuning, LoRA, PrefixTuning, SoftPrompt
from .state import DeltaState  # registers the prompt's "delta" state
from .structure import (
    Delta,
    DeltaLibrary,
    DeltaSpec,
    count_parameters,
    default_lora_targets,
    read_structure,
    structure_table,
    structure_view,
)

__all__ = [
    "Adapter",
    "BitFit",
    "Delta",
    "DeltaLibrary",
    "DeltaState",
    "DeltaModule",
    "DeltaSpec",
    "LNTuning",
    "LoRA",
    "PrefixTuning",
    "SoftPrompt",
    "count_parameters",
    "default_lora_targets",
    "read_structure",
    "structure_table",
    "structure_view",
]
