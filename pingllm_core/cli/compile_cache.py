"""The on-disk cache of compiled XLA programs that makes one-shot CLI queries start fast."""

from __future__ import annotations

import os
from pathlib import Path

COMPILE_CACHE_ENV = "PINGLLM_COMPILE_CACHE"  # folder of compiled XLA programs; "" turns the cache off


def compile_cache_dir() -> Path | None:
    """$PINGLLM_COMPILE_CACHE, else $XDG_CACHE_HOME (or ~/.cache)/pingllm/xla; None when set to ""."""
    env = os.environ.get(COMPILE_CACHE_ENV)
    if env is not None:
        return Path(env).expanduser() if env else None
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pingllm" / "xla"


def enable_compile_cache() -> Path | None:
    """Keep compiled programs on disk so the next one-shot query skips XLA compilation (seconds of each call).

    Leaves a cache the user configured for JAX itself alone; an unwritable folder means no cache, not an error.
    """
    import jax

    if jax.config.jax_compilation_cache_dir:
        return Path(jax.config.jax_compilation_cache_dir)
    path = compile_cache_dir()
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update(
        "jax_persistent_cache_min_compile_time_secs", 0.0
    )  # the query programs are many and small
    return path
