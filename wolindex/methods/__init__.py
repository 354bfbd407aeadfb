"""Builders, one module each; importing this package registers them all."""
from . import adaptive, ds, exact, faiss_baselines, lss  # noqa: F401  (registers)
from .base import Method
from .registry import METHODS, get_method, register

__all__ = ["METHODS", "Method", "get_method", "register"]
