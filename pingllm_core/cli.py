"""`pingllm`: the query engine on the command line (predict, rank, destinations, when, counterpart).

Exit codes: 0 ok, 2 bad input (message on stderr, no traceback), 1 any other error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

CHECKPOINT_ENV = "PINGLLM_CHECKPOINT"
COMPILE_CACHE_ENV = "PINGLLM_COMPILE_CACHE"  # folder of compiled XLA programs; "" turns the cache off
EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT = 0, 1, 2


class CliError(Exception):
    """An error worth one line on stderr and exit code `code`."""

    def __init__(self, message: str, code: int = EXIT_BAD_INPUT):
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


def _quantiles(text: str) -> tuple[float, ...]:
    try:
        levels = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"quantiles must be comma-separated numbers, got {text!r}") from None
    if not levels or any(not 0 < q < 1 for q in levels):
        raise argparse.ArgumentTypeError(f"quantiles must lie strictly between 0 and 1, got {text!r}")
    return levels


def _rtt_range(text: str) -> tuple[float, float]:
    try:
        parts = [float(x) for x in text.replace(":", "-").split("-") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"RTT must be MS or LO-HI in ms, got {text!r}") from None
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"RTT must be MS or LO-HI in ms, got {text!r}")
    return (parts[0], parts[-1])


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of every subcommand."""
    parser = argparse.ArgumentParser(prog="pingllm", description="Ask a trained pingllm model about RTTs.")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--checkpoint", type=Path, help=f"checkpoint folder (default: ${CHECKPOINT_ENV} or newest)"
    )
    common.add_argument("--context", help="your recent pings: CSV, JSONL or RIPE result lines")
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser("predict", parents=[common], help="RTT distribution and P(failure) for SRC -> DST")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--time", help="unix seconds or ISO 8601 (UTC if no offset)")
    p.add_argument("--quantiles", type=_quantiles, default=(0.1, 0.5, 0.9), help="e.g. 0.1,0.5,0.9")
    p.add_argument("--plot", type=Path, help="write a PNG histogram of the RTT distribution")

    p = sub.add_parser("rank", parents=[common], help="rank candidate destinations by predicted RTT")
    p.add_argument("src")
    p.add_argument("--candidates", type=Path, help="file with one address per line (default: stdin)")
    p.add_argument("--time")
    p.add_argument("--threshold", type=float, help="rank by P(rtt <= THRESHOLD ms) instead of the median")
    p.add_argument("--top", type=int, default=0, help="show only the best N")

    p = sub.add_parser("destinations", parents=[common], help="likely destinations for SRC at an RTT")
    p.add_argument("src")
    p.add_argument("rtt", type=_rtt_range, help="RTT in ms, or a range LO-HI")
    p.add_argument("-n", type=int, default=10)

    p = sub.add_parser("when", parents=[common], help="likely time of a measurement after a timed context")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("rtt", type=float, help="RTT in ms (-1 = failed)")
    p.add_argument("-k", type=int, default=5)

    p = sub.add_parser("counterpart", parents=[common], help="likely IPv6 address of an IPv4 source, or back")
    p.add_argument("src")
    p.add_argument("-n", type=int, default=5)
    return parser


def _engine(args: argparse.Namespace):
    from pingllm_core.query import QueryEngine

    path = args.checkpoint or default_checkpoint()
    if not path.is_dir():
        raise CliError(f"checkpoint folder {str(path)!r} does not exist")
    return QueryEngine.load(path)


def _context(args: argparse.Namespace):
    if not args.context:
        return None
    from pingllm_core.query import load_context

    return load_context(args.context)


def _table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header]] + [
        [f"{c:.4g}" if isinstance(c, float) else str(c) for c in r] for r in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells)


def _plot(pred, path: Path) -> None:
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
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _warn(warnings: Sequence[str]) -> None:
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)


def cmd_predict(args: argparse.Namespace) -> None:
    """pingllm predict."""
    from pingllm_core.query import parse_ip, parse_time

    parse_ip(args.src, "source"), parse_ip(args.dst, "destination")  # fail fast, before loading the model
    if args.time is not None:
        parse_time(args.time)
    ctx = _context(args)
    engine = _engine(args)
    pred = engine.predict(args.src, args.dst, time=args.time, context=ctx, quantiles=args.quantiles)
    _warn(pred.warnings)
    if args.plot:
        _plot(pred, args.plot)
    if args.json:
        print(json.dumps(pred.to_dict()))
        return
    rows = [("p_fail", pred.p_fail), ("median_ms", pred.median)]
    rows += [(f"{k}_ms", v) for k, v in pred.quantiles.items()] + [("mean_ms", pred.mean)]
    print(f"{pred.src} -> {pred.dst}" + (f" at {pred.time}" if pred.time is not None else ""))
    print(_table(rows, ("quantity", "value")))


def cmd_rank(args: argparse.Namespace) -> None:
    """pingllm rank."""
    from tqdm import tqdm

    if args.candidates:
        if not args.candidates.is_file():
            raise CliError(f"candidates file {str(args.candidates)!r} does not exist")
        text = args.candidates.read_text()
    else:
        text = sys.stdin.read()
    cands = [line.split("#")[0].strip() for line in text.splitlines()]
    cands = [c for c in cands if c]
    from pingllm_core.query import parse_ip

    for i, c in enumerate([args.src, *cands]):
        parse_ip(c, "source" if i == 0 else f"candidate {i}")
    ctx = _context(args)
    engine = _engine(args)
    by = "p_below" if args.threshold is not None else "median"
    with tqdm(
        total=len(cands), desc="ranking", unit="dst", file=sys.stderr, disable=len(cands) < 1000
    ) as bar:

        def progress(msg: str) -> None:
            done = int(msg.split()[1].split("/")[0])
            bar.update(max(0, done - bar.n))

        ranked = engine.rank(args.src, cands, time=args.time, context=ctx, by=by, threshold_ms=args.threshold,
                             progress=progress)  # fmt: skip
    if args.top:
        ranked = ranked[: args.top]
    if args.json:
        print(
            json.dumps(
                [{"dst": r.dst, "score": r.score, "median_ms": r.median, "p_fail": r.p_fail} for r in ranked]
            )
        )
        return
    score = f"P(rtt<={args.threshold:g}ms)" if by == "p_below" else "score"
    rows = [(i + 1, r.dst, r.score, r.median, r.p_fail) for i, r in enumerate(ranked)]
    print(_table(rows, ("rank", "dst", score, "median_ms", "p_fail")))


def cmd_destinations(args: argparse.Namespace) -> None:
    """pingllm destinations."""
    ctx = _context(args)
    found = _engine(args).likely_destinations(args.src, args.rtt, args.n, context=ctx)
    if args.json:
        print(json.dumps([{"dst": f.addr, "prob": f.prob} for f in found]))
        return
    print(_table([(f.addr, f.prob) for f in found], ("dst", "prob")))


def cmd_when(args: argparse.Namespace) -> None:
    """pingllm when."""
    if not args.context:
        raise CliError("`when` needs --context FILE with timestamps (the time is predicted as a delta)")
    ctx = _context(args)
    found = _engine(args).likely_timestamp(args.src, args.dst, args.rtt, ctx, args.k)
    if args.json:
        print(json.dumps([{"time": f.time, "delta_s": f.delta_s, "prob": f.prob} for f in found]))
        return
    import datetime as dt

    rows = [(f.time, dt.datetime.fromtimestamp(f.time, dt.UTC).isoformat(), f.delta_s, f.prob) for f in found]
    print(_table(rows, ("time", "utc", "delta_s", "prob")))


def cmd_counterpart(args: argparse.Namespace) -> None:
    """pingllm counterpart."""
    ctx = _context(args)
    found = _engine(args).counterpart(args.src, context=ctx, n=args.n)
    if args.json:
        print(json.dumps([{"addr": f.addr, "prob": f.prob} for f in found]))
        return
    print(_table([(f.addr, f.prob) for f in found], ("addr", "prob")))


COMMANDS = {
    "predict": cmd_predict,
    "rank": cmd_rank,
    "destinations": cmd_destinations,
    "when": cmd_when,
    "counterpart": cmd_counterpart,
}


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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `pingllm` console script; returns the exit code."""
    from pingllm_core.query import QueryError

    if argv is None:  # the console script; in-process callers (tests, notebooks) keep their own JAX config
        enable_compile_cache()

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse already printed usage and the message
        return EXIT_OK if exit_.code == 0 else EXIT_BAD_INPUT
    try:
        COMMANDS[args.command](args)
    except (QueryError, CliError) as err:
        print(f"pingllm {args.command}: {err}", file=sys.stderr)
        return getattr(err, "code", EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        return EXIT_ERROR
    except Exception as err:  # anything else is our bug or the environment's: say so without a wall of text
        print(f"pingllm {args.command}: error: {type(err).__name__}: {err}", file=sys.stderr)
        if os.environ.get("PINGLLM_DEBUG"):
            raise
        return EXIT_ERROR
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
