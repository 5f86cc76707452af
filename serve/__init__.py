"""rerank_serve: a production /rerank service over the runtime (no torch), embedded or on Ray Serve.

    rerank-serve exports/bge-reranker-v2-m3-fp32 --port 8080
    curl -s localhost:8080/rerank -d '{"query": "what is panda?", "texts": ["The giant panda is a bear."]}'

Modules: schemas (the three API shapes), model (the runtime reranker, token counts, /info), scheduler (cross-request
batching), metrics (Prometheus), app (the routes), cli (`rerank-serve`), ray_app (the Ray Serve deployment).
"""

__all__: list[str] = []
