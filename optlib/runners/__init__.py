"""Backends as small runners sharing one interface (see base.Runner)."""
from .base import Runner, evaluate
from .pytorch import TorchRunner

__all__ = ["Runner", "TorchRunner", "evaluate"]
