"""Workstation side of edgedx: training, ONNX export, quantization, engines and verification.

May import torch, onnx and keras; the runtime package ``edgedx`` never imports this package's
heavy dependencies at start-up.
"""
