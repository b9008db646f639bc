"""Evaluators judge generated images (one module each; see base.py for the row format)."""
from .base import Evaluator, evaluator_names, get_evaluator, register_evaluator

__all__ = ["Evaluator", "evaluator_names", "get_evaluator", "register_evaluator"]
