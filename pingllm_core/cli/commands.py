"""The query commands of `pingllm` (predict, rank, destinations, when, counterpart): each checks its inputs,
then the checkpoint, then loads the model, and prints a table or a JSON object with a `warnings` list."""

from __future__ import annotations

import argparse
import json
import sys

from pingllm_core.cli import info as cli_info
from pingllm_core.cli.info import CliError, table
from pingllm_core.model.model_card import iso

PLOT_SUFFIXES = (".png", ".svg", ".pdf")


class _Query:
    """One command's checkpoint, card and warnings; inputs are checked before the model is loaded."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.path = cli_info.checkpoint_path(args)  # an unusable folder stops here, before any work
        self.card, self.warnings = cli_info.read_card(self.path)
        from pingllm_core.model.model_card import trust_warnings

        self.warnings += trust_warnings(self.card)

    def time(self) -> int | None:
        """--time as unix seconds, checked against 2000-2099 (error) and the training window (warning)."""
        if getattr(self.args, "time", None) is None:
            return None
        from pingllm_core.model.model_card import time_warning, window_text
        from pingllm_core.query.inputs import check_time_range, parse_time

        t = check_time_range(parse_time(self.args.time), "--time", window_text(self.card))
        self.warnings += [w for w in [time_warning(self.card, t)] if w]
        return t

    def context(self):
        if not self.args.context:
            return None
        from pingllm_core.query.context import load_context

        return load_context(self.args.context)

    def engine(self):
        """The model, loaded once the inputs passed (the compile cache first, for the console script)."""
        if getattr(self.args, "compile_cache", False):
            from pingllm_core.cli.compile_cache import enable_compile_cache

            enable_compile_cache()
        from pingllm_core.query.engine import QueryEngine

        return QueryEngine.load(self.path)

    def emit(self, payload: dict, text: str) -> None:
        """Warnings on stderr, then the JSON object (with `warnings`) or the text table on stdout."""
        self.warnings = list(dict.fromkeys(self.warnings))
        for w in self.warnings:
            print(f"pingllm {self.args.command}: warning: {w}", file=sys.stderr)
        print(json.dumps({**payload, "warnings": self.warnings}) if self.args.json else text)


def cmd_predict(args: argparse.Namespace) -> None:
    """pingllm predict."""
    from pingllm_core.query.inputs import check_families

    check_families(args.src, args.dst, args.allow_mixed_family)  # fail fast, before loading the model
    if args.plot is not None:
        if args.plot.suffix.lower() not in PLOT_SUFFIXES:
            raise CliError(f"--plot {str(args.plot)!r} must end in {', '.join(PLOT_SUFFIXES)}")
        if not args.plot.parent.is_dir():
            raise CliError(f"--plot folder {str(args.plot.parent)!r} does not exist")
    q = _Query(args)
    t, ctx = q.time(), q.context()
    pred = q.engine().predict(args.src, args.dst, time=t, context=ctx, quantiles=args.quantiles,
                              allow_mixed_family=args.allow_mixed_family)  # fmt: skip
    q.warnings = list(pred.warnings) + q.warnings
    rows = [("p_fail", pred.p_fail), ("median_ms", pred.median)]
    rows += [(f"{k}_ms", v) for k, v in pred.quantiles.items()] + [("mean_ms", pred.mean)]
    when = "" if pred.time is None else f" at {iso(pred.time)}"
    payload = {
        k: v for k, v in pred.to_dict(with_distribution=args.full_distribution).items() if k != "warnings"
    }
    q.emit(payload, f"{pred.src} -> {pred.dst}{when}\n" + table(rows, ("quantity", "value")))
    if args.plot is not None:
        try:
            cli_info.plot(pred, args.plot)
        except (OSError, ValueError) as err:
            raise CliError(f"cannot write --plot {str(args.plot)!r}: {err}") from None


def cmd_rank(args: argparse.Namespace) -> None:
    """pingllm rank."""
    from pingllm_core.query.inputs import address_warnings, parse_ip, read_candidates

    parse_ip(args.src, "source")
    if args.candidates:
        if not args.candidates.is_file():
            raise CliError(f"candidates file {str(args.candidates)!r} does not exist")
        text, name = args.candidates.read_text(errors="replace"), args.candidates.name
    else:
        text, name = sys.stdin.read(), "stdin"
    cands = read_candidates(text, args.src, args.allow_mixed_family)
    if cands.bad and not args.skip_bad_lines:
        line, problem = cands.bad[0]
        more = " or --allow-mixed-family to rank it anyway" if line in cands.other_family else ""
        raise CliError(f"{name} line {line}: {problem}; pass --skip-bad-lines to skip such lines{more}")
    q = _Query(args)
    if cands.bad:
        lines = ", ".join(str(n) for n, _ in cands.bad[:10]) + (" ..." if len(cands.bad) > 10 else "")
        q.warnings.append(f"skipped {len(cands.bad)} bad line(s) of {name}: {lines}")
    if not cands.addrs:
        raise CliError(f"{name} holds no usable candidate address (one address per line)")
    q.warnings += address_warnings([args.src, *cands.addrs])
    t, ctx = q.time(), q.context()
    by = "p_below" if args.threshold is not None else "median"
    ranked = cli_info.rank_with_progress(q.engine(), args, cands.addrs, t, ctx, by)
    ranked = ranked[: args.top] if args.top else ranked
    score = f"P(rtt<={args.threshold:g}ms)" if by == "p_below" else "score"
    payload = {"src": args.src, "by": by, "threshold_ms": args.threshold,
               "results": [{"dst": r.dst, "score": r.score, "median_ms": r.median, "p_fail": r.p_fail}
                           for r in ranked]}  # fmt: skip
    rows = [(i + 1, r.dst, r.score, r.median, r.p_fail) for i, r in enumerate(ranked)]
    q.emit(payload, table(rows, ("rank", "dst", score, "median_ms", "p_fail")))


def cmd_destinations(args: argparse.Namespace) -> None:
    """pingllm destinations."""
    from pingllm_core.query.inputs import address_warnings, parse_ip

    parse_ip(args.src, "source")
    q = _Query(args)
    q.warnings += address_warnings([args.src])
    ctx = q.context()
    found = q.engine().likely_destinations(args.src, args.rtt, args.n, context=ctx,
                                           allow_mixed_family=args.allow_mixed_family)  # fmt: skip
    if len(found) < args.n:
        q.warnings.append(f"only {len(found)} public destination(s) among the most likely ones")
    payload = {
        "src": args.src,
        "rtt_ms": list(args.rtt),
        "results": [{"dst": f.addr, "prob": f.prob} for f in found],
    }
    q.emit(payload, table([(f.addr, f.prob) for f in found], ("dst", "prob")))


def cmd_when(args: argparse.Namespace) -> None:
    """pingllm when."""
    from pingllm_core.query.inputs import address_warnings, check_families

    check_families(args.src, args.dst, args.allow_mixed_family)
    need = "`when` needs --context FILE with timestamps (a `time` column): the time is predicted after them"
    if not args.context:
        raise CliError(need)
    q = _Query(args)
    q.warnings += address_warnings([args.src, args.dst])
    ctx = q.context()
    if not (ctx.time >= 0).any():  # NO_TIME (-1) marks untimed rows
        raise CliError(f"{need}; {args.context} has none")
    found = q.engine().likely_timestamp(args.src, args.dst, args.rtt, ctx, args.k,
                                        allow_mixed_family=args.allow_mixed_family)  # fmt: skip
    results = [{"time": f.time, "utc": iso(f.time), "delta_s": f.delta_s, "prob": f.prob} for f in found]
    rows = [(r["time"], r["utc"], r["delta_s"], r["prob"]) for r in results]
    q.emit({"src": args.src, "dst": args.dst, "rtt_ms": args.rtt, "results": results},
           table(rows, ("time", "utc", "delta_s", "prob")))  # fmt: skip


def cmd_counterpart(args: argparse.Namespace) -> None:
    """pingllm counterpart."""
    from pingllm_core.query.inputs import address_warnings, parse_ip

    parse_ip(args.src, "source")
    q = _Query(args)
    q.warnings += address_warnings([args.src])
    ctx = q.context()
    found = q.engine().counterpart(args.src, context=ctx, n=args.n)
    if len(found) < args.n:
        q.warnings.append(f"only {len(found)} public address(es) among the most likely ones")
    payload = {"src": args.src, "results": [{"addr": f.addr, "prob": f.prob} for f in found]}
    q.emit(payload, table([(f.addr, f.prob) for f in found], ("addr", "prob")))
