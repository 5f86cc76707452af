"""rerank_export: export BGE rerankers to ONNX and TensorRT, with a PyTorch reference for parity."""
