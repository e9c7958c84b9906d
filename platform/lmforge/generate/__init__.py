"""Text generation on onnxruntime, with no Ray in it (serving and evaluation both use it)."""
