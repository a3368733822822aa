"""optlib: the helpers the notebooks import: data, models, runners, benchmark, metrics, records,
reports. Each module is one concern; see README.md for the layout."""
from .params import Params, ParamsError, load_params, notebook_params

__version__ = "0.1.0"
__all__ = ["Params", "ParamsError", "load_params", "notebook_params", "__version__"]
