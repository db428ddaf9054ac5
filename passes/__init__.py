"""Graph-rewrite passes over ONNX, registered by name."""
