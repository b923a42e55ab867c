"""The model card: what a checkpoint was trained on and how well it did, in `<checkpoint>/model_card.json`.

Sections, each written by the stage that knows it:
- `training` (the `trained_model` asset, `training_section`): tier, params, steps, the train split's time window,
  IPv4/IPv6 shares, probes and source addresses, held-out RTT loss against the marginal RTT loss, and a few
  example pairs from the train split (`pingllm examples`).
- `evaluation` (the `evaluation` asset, `evaluation_section`): per split, the model's median relative error
  and the best baseline's.
A retrained checkpoint gets a fresh card (`write`); later stages merge their section (`update`). The query CLI
reads it (`read`) for `pingllm info`, for the training window that `--time` is checked against, and for the
warning on answers from a model that did not beat the marginal RTT distribution.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

CARD_FILE = "model_card.json"
MODEL_CONFIG_FILE = "model_config.json"  # written beside the orbax steps by training (checkpoint.py)
FORMAT = 1  # bumped when a section changes meaning
EXAMPLES_PER_FAMILY = 5


class ModelCardError(ValueError):
    """The card exists but cannot be read (damaged JSON, not an object)."""


def card_path(ckpt_dir: str | Path) -> Path:
    """Where a checkpoint folder keeps its card."""
    return Path(ckpt_dir) / CARD_FILE


def read(ckpt_dir: str | Path) -> dict:
    """The card of a checkpoint folder; {} when it has none. Raises ModelCardError when it is damaged."""
    path = card_path(ckpt_dir)
    if not path.exists():
        return {}
    try:
        card = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelCardError(f"{path} cannot be read ({err})") from None
    if not isinstance(card, dict):
        raise ModelCardError(f"{path} does not hold a JSON object")
    return card


def write(ckpt_dir: str | Path, card: dict) -> Path:
    """Replace the card (atomic rename, so a reader never sees half a file)."""
    path = card_path(ckpt_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"format": FORMAT, **card}, indent=2, sort_keys=True, default=_jsonable))
    tmp.replace(path)
    return path


def update(ckpt_dir: str | Path, section: str, data: dict) -> dict:
    """Merge one section into the card (a damaged card is replaced); returns the whole card."""
    try:
        card = read(ckpt_dir)
    except ModelCardError:
        card = {}
    card[section] = data
    write(ckpt_dir, card)
    return card


def _jsonable(value: object) -> object:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def iso(unix_s: int) -> str:
    """Unix seconds as ISO 8601 UTC (the card's and the CLI's time format)."""
    return dt.datetime.fromtimestamp(int(unix_s), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _window(first: int, last: int) -> dict:
    return {"first": iso(first), "last": iso(last), "first_unix": int(first), "last_unix": int(last)}


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _finite(x: object) -> float | None:
    try:
        v = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def training_section(
    train_parquet: str | Path, *, tier: str, params: int, steps: int, eval_rtt_loss: float | None,
    marginal_rtt_loss: float | None, examples: int = EXAMPLES_PER_FAMILY,
) -> dict:  # fmt: skip
    """The `training` section from the train split (measurement schema) and the run's numbers."""
    from pingllm_core import db  # DuckDB only here: `pingllm info` reads the card without it

    con = db.connect()
    src = f"read_parquet('{Path(train_parquet).as_posix()}')"
    ((rows, v6, first, last, probes, sources),) = con.execute(
        f"SELECT count(*), count(*) FILTER (WHERE ip_version = 6), epoch(min(event_time))::BIGINT, "
        f"epoch(max(event_time))::BIGINT, count(DISTINCT prb_id), count(DISTINCT src_addr) FROM {src}"
    ).fetchall()
    # Example pairs: per family the best-measured pair of each source, then the best-measured sources.
    pairs = con.execute(
        f"""WITH p AS (SELECT ip_version, src_addr, dst_addr, count(*) AS pings,
                              median(rtt) FILTER (WHERE rtt >= 0) AS median_rtt_ms
                       FROM {src} GROUP BY ALL),
           best AS (SELECT * FROM p QUALIFY row_number() OVER
                    (PARTITION BY ip_version, src_addr ORDER BY pings DESC, dst_addr) = 1)
           SELECT ip_version, src_addr, dst_addr, pings, median_rtt_ms FROM best QUALIFY row_number() OVER
           (PARTITION BY ip_version ORDER BY pings DESC, src_addr) <= {int(examples)}
           ORDER BY ip_version, pings DESC, src_addr"""
    ).fetchall()
    con.close()
    return {
        "tier": tier,
        "params": int(params),
        "steps": int(steps),
        "rows": int(rows),
        "window": None if first is None else _window(first, last),
        "families": {"ipv4": (rows - v6) / rows, "ipv6": v6 / rows} if rows else {},
        "probes": int(probes),
        "sources": int(sources),
        "eval_rtt_loss": _finite(eval_rtt_loss),
        "marginal_rtt_loss": _finite(marginal_rtt_loss),
        "examples": [
            {"src": s, "dst": d, "ip_version": int(v), "pings": int(n), "median_rtt_ms": _finite(m)}
            for v, s, d, n, m in pairs
        ],
        "written": _now(),
    }


def evaluation_section(splits: dict) -> dict:
    """The `evaluation` section from `evaluate`'s metrics["splits"]: per split, the model's median relative
    error and the baseline with the lowest one (ground truth is not a baseline)."""
    headline = {}
    for split, methods in splits.items():
        model = methods.get("model", {}).get("rel_p50") if isinstance(methods, dict) else None
        baselines = {name: m["rel_p50"] for name, m in methods.items()
                     if isinstance(m, dict) and _finite(m.get("rel_p50")) is not None
                     and not name.startswith(("model", "ground_truth"))}  # fmt: skip
        best = min(baselines, key=lambda n: (baselines[n], n)) if baselines else None
        headline[split] = {
            "rows": methods.get("rows"),
            "model_rel_p50": _finite(model),
            "best_baseline": best,
            "best_baseline_rel_p50": None if best is None else _finite(baselines[best]),
        }
    return {"headline": headline, "written": _now()}


def train_window(card: dict) -> tuple[int, int] | None:
    """(first, last) unix seconds of the train split, when the card has them."""
    window = (card.get("training") or {}).get("window") or {}
    if "first_unix" not in window or "last_unix" not in window:
        return None
    return int(window["first_unix"]), int(window["last_unix"])


def window_text(card: dict) -> str | None:
    """The training window as 'FIRST .. LAST' (UTC), when known."""
    window = train_window(card)
    return None if window is None else f"{iso(window[0])} .. {iso(window[1])}"


def beat_marginal(card: dict) -> bool | None:
    """Whether the held-out RTT loss is below the marginal RTT loss; None when the card cannot tell."""
    training = card.get("training") or {}
    model, marginal = _finite(training.get("eval_rtt_loss")), _finite(training.get("marginal_rtt_loss"))
    if model is None or marginal is None:
        return None
    return model < marginal


def trust_warnings(card: dict) -> list[str]:
    """Warnings every answer of this checkpoint should carry (empty for a model that learned RTTs)."""
    if beat_marginal(card) is not False:
        return []
    t = card["training"]
    return [
        f"this model did not beat one global RTT distribution on held-out probes (RTT loss "
        f"{t['eval_rtt_loss']:.3f} vs marginal {t['marginal_rtt_loss']:.3f} nats): its RTTs barely depend "
        f"on the addresses; see `pingllm info`"
    ]


def time_warning(card: dict, unix_s: int) -> str | None:
    """A warning when a query time lies outside the training window."""
    window = train_window(card)
    if window is None or window[0] <= unix_s <= window[1]:
        return None
    return (
        f"time {iso(unix_s)} is outside the training window {window_text(card)}: the model saw no "
        f"measurements then"
    )


def checkpoint_problem(path: Path) -> str | None:
    """Why `path` is not a loadable checkpoint folder (one line), or None; reads no weights, imports no JAX."""
    if not path.exists():
        return f"checkpoint folder {str(path)!r} does not exist"
    if not path.is_dir():
        return f"{str(path)!r} is a file; a checkpoint is a folder holding {MODEL_CONFIG_FILE}"
    config = path / MODEL_CONFIG_FILE
    if not config.exists():
        return (f"{str(path)!r} is not a pingllm checkpoint folder: it has no {MODEL_CONFIG_FILE} "
                f"(the folder under checkpoints/ that trained_model wrote, e.g. var/checkpoints/tiny)")  # fmt: skip
    try:
        cfg = json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"{config} is damaged: {err}"
    if not isinstance(cfg, dict) or not cfg:
        return f"{config} is damaged: it holds no model settings"
    if not any(p.is_dir() and p.name.isdigit() for p in path.iterdir()):
        return f"{str(path)!r} holds no saved training step: training stopped before its first checkpoint"
    return None
