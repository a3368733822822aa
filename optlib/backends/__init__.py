"""Backends as small runners sharing one interface (base.Runner), and the artifacts that rebuild
them in a fresh process (artifacts.load_runner)."""
from .base import Runner, evaluate
from .pytorch import TorchRunner

__all__ = ["Runner", "TorchRunner", "evaluate"]
