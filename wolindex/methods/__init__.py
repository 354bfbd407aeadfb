"""Builders: every module or package here other than base, ops and registry is a method, and importing this
package imports (registers) them all, so removing a method's module removes it from both engines."""
import importlib
import pkgutil

from .base import Method
from .registry import METHODS, get_method, register

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "ops", "registry"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "Method", "get_method", "register"]
