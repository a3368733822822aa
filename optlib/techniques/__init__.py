"""Techniques that change how the model runs: ONNX export, compilers, INT8 (ONNX Runtime and
PyTorch) and the INT8 studies. Each builds runners that `measurement.experiment.measure` times."""
