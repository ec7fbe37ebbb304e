"""The shared evaluation harness."""

from .encoding import EncodedPrompt, PromptEncoder, Row
from .harness import EvalResult, Harness, ScoreOutput, classification_metrics

__all__ = ["EncodedPrompt", "EvalResult", "Harness", "PromptEncoder", "Row", "ScoreOutput", "classification_metrics"]
