"""rerank_runtime: FlagEmbedding's reranker API over ONNX Runtime and TensorRT. Never imports torch."""
