"""Export stage (``lmforge export``): HF model -> ONNX, parity-checked against PyTorch."""
