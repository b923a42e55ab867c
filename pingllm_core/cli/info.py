"""`pingllm info` and `pingllm examples` (the checkpoint's model card), and helpers shared by the CLI's commands:
finding the checkpoint, reading its card, plotting, ranking with a progress bar."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

CHECKPOINT_ENV = "PINGLLM_CHECKPOINT"


class CliError(Exception):
    """An error worth one line on stderr and exit code `code` (2: bad input)."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def default_checkpoint() -> Path:
    """$PINGLLM_CHECKPOINT, else the newest folder under the data layout's checkpoints/ with a model_config.json."""
    env = os.environ.get(CHECKPOINT_ENV)
    if env:
        return Path(env).expanduser()
    from pingllm_core.paths import DataLayout

    root = DataLayout.default().checkpoints
    found = [p.parent for p in root.glob("**/model_config.json")] if root.exists() else []
    if not found:
        raise CliError(f"no checkpoint found under {root}; pass --checkpoint DIR or set ${CHECKPOINT_ENV}")
    return max(found, key=lambda p: ((p / "model_config.json").stat().st_mtime, str(p)))


def checkpoint_path(args: argparse.Namespace) -> Path:
    """The checkpoint folder to use; CliError with one line when it is not a usable checkpoint."""
    from pingllm_core.model.model_card import checkpoint_problem

    path = args.checkpoint or default_checkpoint()
    problem = checkpoint_problem(path)
    if problem:
        raise CliError(problem)
    return path


def read_card(path: Path) -> tuple[dict, list[str]]:
    """(model card or {}, warnings): a damaged card is a warning, not an error."""
    from pingllm_core.model import model_card

    try:
        return model_card.read(path), []
    except model_card.ModelCardError as err:
        return {}, [f"ignoring the model card: {err}"]


def latest_step(path: Path) -> int | None:
    """The newest saved step of a checkpoint folder (orbax keeps one folder per step)."""
    steps = [int(p.name) for p in path.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(steps) if steps else None


def plot(pred, path: Path) -> None:
    """Write a histogram of the RTT distribution (log bins) with its median."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rtt, probs = pred.rtt_ms, pred.probs
    lo, hi = max(rtt.min(), 1e-3), max(rtt.max(), rtt.min() * 1.01 + 1e-3)
    bins = np.geomspace(lo, hi, 60)  # log bins: RTT codes are log-spaced
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(np.clip(rtt, lo, hi), bins=bins, weights=probs, color="tab:blue")
    ax.set_xscale("log")
    ax.axvline(pred.median, color="k", ls="--", label=f"median {pred.median:.3g} ms")
    ax.set_xlabel("RTT (ms)")
    ax.set_ylabel("P(RTT | success)")
    ax.set_title(f"{pred.src} -> {pred.dst}   P(fail) = {pred.p_fail:.3f}")
    ax.legend()
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def rank_with_progress(engine, args: argparse.Namespace, cands: list[str], time, context, by: str) -> list:
    """`engine.rank` with a progress bar on stderr for long candidate lists."""
    from tqdm import tqdm

    with tqdm(
        total=len(cands), desc="ranking", unit="dst", file=sys.stderr, disable=len(cands) < 1000
    ) as bar:

        def progress(msg: str) -> None:
            done = int(msg.split()[1].split("/")[0])
            bar.update(max(0, done - bar.n))

        return engine.rank(args.src, cands, time=time, context=context, by=by, threshold_ms=args.threshold,
                           progress=progress, allow_mixed_family=args.allow_mixed_family)  # fmt: skip


def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    """Right-aligned columns with a header; floats to 4 significant digits."""
    cells = [[str(c) for c in header]] + [
        [f"{c:.4g}" if isinstance(c, float) else str(c) for c in r] for r in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells)


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "?" if x is None else format(x, spec)


def info_lines(path: Path, card: dict, model: dict, step: int | None) -> tuple[list[str], list[str]]:
    """(lines of `pingllm info`, what the card lacks)."""
    from pingllm_core.model import model_card

    lines = [f"checkpoint   {path} (step {step})"]
    if model:
        lines.append(f"shape        d_model {model.get('d_model')}, {model.get('n_layers')} layers, "
                     f"context {model.get('max_len')} tokens")  # fmt: skip
    t, missing = card.get("training"), []
    if not t:
        missing.append("training")
        lines.append(f"training     unknown: no {model_card.CARD_FILE} (the trained_model asset writes it); "
                     f"window, families, probes and losses are not recorded")  # fmt: skip
    else:
        fam = t.get("families") or {}
        lines += [
            f"model        tier {t.get('tier')}, {t.get('params'):,} parameters, {t.get('steps')} steps",
            f"trained on   {model_card.window_text(card) or '?'} ({t.get('rows'):,} pings in the train split)",
            f"families     IPv4 {fam.get('ipv4', 0):.0%}, IPv6 {fam.get('ipv6', 0):.0%}",
            f"probes       {t.get('probes')} probes, {t.get('sources')} source addresses",
        ]
        verdict = {True: "beats it", False: "does NOT beat it", None: "cannot tell"}[
            model_card.beat_marginal(card)
        ]
        lines.append(f"RTT loss     {_fmt(t.get('eval_rtt_loss'))} nats on held-out probes vs "
                     f"{_fmt(t.get('marginal_rtt_loss'))} for one global RTT distribution: {verdict}")  # fmt: skip
    e = (card.get("evaluation") or {}).get("headline")
    if not e:
        missing.append("evaluation")
        lines.append("evaluation   not recorded (materialize the evaluation asset for this checkpoint)")
    else:
        lines.append("evaluation   median relative error of the RTT median, model vs the best baseline:")
        for split, h in e.items():
            lines.append(f"  {split:<22} model {_fmt(h.get('model_rel_p50'))}  vs  {h.get('best_baseline')} "
                         f"{_fmt(h.get('best_baseline_rel_p50'))}  ({h.get('rows')} rows)")  # fmt: skip
    examples = (t or {}).get("examples") or []
    if examples:
        lines.append("examples     pairs from the train split (`pingllm examples` lists more):")
        lines += [f"  pingllm predict {x['src']} {x['dst']}" for x in examples[:3]]
    return lines, missing


def cmd_info(args: argparse.Namespace) -> None:
    """pingllm info."""
    from pingllm_core.model import model_card

    path = checkpoint_path(args)
    card, warnings = read_card(path)
    warnings += model_card.trust_warnings(card)
    model = json.loads((path / "model_config.json").read_text())
    step = latest_step(path)
    lines, missing = info_lines(path, card, model, step)
    if args.json:
        print(json.dumps({"checkpoint": str(path), "step": step, "model_config": model, "card": card,
                          "beat_marginal": model_card.beat_marginal(card), "missing": missing,
                          "warnings": warnings}))  # fmt: skip
        return
    for w in warnings:
        print(f"pingllm info: warning: {w}", file=sys.stderr)
    print("\n".join(lines))


def cmd_examples(args: argparse.Namespace) -> None:
    """pingllm examples."""
    path = checkpoint_path(args)
    card, _ = read_card(path)
    examples = (card.get("training") or {}).get("examples")
    if examples is None:
        raise CliError(
            f"{path} has no model card with examples (the trained_model asset writes one); list pairs from the "
            f'train split instead: duckdb -c "SELECT src_addr, dst_addr, count(*) n FROM '
            f"'var/splits/train.parquet' GROUP BY ALL ORDER BY n DESC LIMIT 10\""
        )
    if args.family:
        examples = [x for x in examples if str(x.get("ip_version")) == args.family]
    examples = examples[: args.n]
    if args.json:
        print(json.dumps({"checkpoint": str(path), "results": examples, "warnings": []}))
        return
    rows = [(x["src"], x["dst"], f"IPv{x['ip_version']}", x["pings"], _fmt(x.get("median_rtt_ms"), ".1f"))
            for x in examples]  # fmt: skip
    print(table(rows, ("src", "dst", "family", "pings", "median_ms")))
