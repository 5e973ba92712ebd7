"""Serving edgedx on Triton Inference Server.

- :mod:`edgedx.serving.stages`: the work of each served step (bytes -> model input, logits ->
  record) on edgedx's own decode, gate, preprocess and postprocess code; no Triton import.
- :mod:`edgedx.serving.triton_models`: the Python-backend models that wrap those stages (imported
  inside ``triton_python_backend_stub`` only).
- :mod:`edgedx.serving.client`: ``edgedx classify --triton URL`` (imports ``tritonclient``).
- :mod:`edgedx.serving.server`: start and stop a ``tritonserver`` from the ``nvidia-pytriton`` wheel
  (tests and benchmarks).

The repository writer and checker live on the workstation side, in :mod:`export.triton`.
"""
