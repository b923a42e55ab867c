"""Dagster definitions for pingllm: thin assets over `pingllm_core`, one module per stage."""

import warnings

import dagster as dg

# Single-run backfill policies are a deliberate choice (see partitions.py); their beta notice is noise.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
