"""Serving stage (``lmforge serve``): an OpenAI-compatible API on Ray Serve + onnxruntime."""
