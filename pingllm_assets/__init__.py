"""Dagster definitions for pingllm: thin assets over `pingllm_core`, one module per stage."""
