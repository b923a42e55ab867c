"""pingllm core library: parsing, synthetic internet, tokens, records, model, training, queries, evaluation.

Pure Python/JAX; nothing here imports Dagster. The asset graph in `pingllm_assets` is a thin layer on top.
"""

__version__ = "0.1.0"
