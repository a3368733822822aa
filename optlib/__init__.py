"""optlib: the helpers the notebooks import. The folders are the architecture:

  core/         plumbing: parameters, allowed values, paths, atomic writes, machine facts, pipeline
  workload/     what is measured: images and preprocessing, models and checkpoints, the GRU
  backends/     one runner per runtime (PyTorch, ONNX Runtime) and the artifacts that rebuild them
  techniques/   what changes how the model runs: ONNX export, compilers, INT8 (ORT and PyTorch)
  measurement/  timing, statistics, accuracy metrics, memory in a child process, the measure step
  results/      typed values, records, comparisons, figures and the report
  chapter.py    what every notebook does first
"""
from .core.params import Params, ParamsError, load_params, notebook_params

__version__ = "0.2.0"
__all__ = ["Params", "ParamsError", "load_params", "notebook_params", "__version__"]
