"""`pingllm`: the query engine on the command line (predict, rank, destinations, when, counterpart, info,
examples).

Exit codes: 0 ok, 2 bad input or an unusable checkpoint (one line on stderr, no traceback), 1 an internal
error (one line; PINGLLM_DEBUG=1 shows the traceback). Warnings go to stderr as `pingllm CMD: warning: ...`
and into the `warnings` list of `--json` output.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from pingllm_core.cli import commands as cli_commands
from pingllm_core.cli import info as cli_info
from pingllm_core.cli.info import CHECKPOINT_ENV, CliError

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT = 0, 1, 2
MAX_RESULTS = 100  # -n / -k: beams are twice as many, each holding a KV cache
CONTEXT_HELP = """\
context file (--context): your own recent pings, which the model reads before answering. A CSV whose
first line names the columns, one ping per line (sample: docs/examples/context.csv):
    time,src,dst,rtt_ms
    2024-07-02T17:40:00Z,193.0.14.129,8.8.8.8,12.5
    1719942000,193.0.14.129,9.9.9.9,-1
  time    unix seconds or ISO 8601 (UTC if no offset), 2000 to 2099; empty = no timestamp
  src,dst addresses of one family per row
  rtt_ms  0 to 600000 ms; -1 or empty = the ping failed
Also accepted: JSON lines with the same keys, RIPE Atlas ping results (one row per packet), .gz/.bz2.
Lines starting with # and blank lines are skipped; errors name the file line."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and negative values (`-5-10`, `-1`, `-inf`) read as values, not options."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        # argparse's own attribute (3.11-3.13): what looks like a negative number is a positional value.
        self._negative_number_matcher = re.compile(r"^-(\d|\.\d|inf|nan)", re.IGNORECASE)

    def error(self, message: str):  # type: ignore[override]
        """One line on stderr and exit code 2, instead of the usage block."""
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def _type(fn, *args):
    """An argparse type from a core validator: its QueryError becomes argparse's one-line error."""

    def convert(text: str):
        from pingllm_core.query.inputs import QueryError

        try:
            return fn(text, *args)
        except QueryError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = fn.__name__
    return convert


def _quantiles(text: str) -> tuple[float, ...]:
    try:
        levels = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"quantiles must be comma-separated numbers, got {text!r}") from None
    if not levels or any(not 0 < q < 1 for q in levels):
        raise argparse.ArgumentTypeError(f"quantiles must lie strictly between 0 and 1, got {text!r}")
    return levels


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if not 1 <= n <= MAX_RESULTS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_RESULTS}, got {n}")
    return n


def _top(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(
            f"must be at least 1 (leave it out to show every candidate), got {n}"
        )
    return n


def _rtt(text: str) -> float:
    from pingllm_core.query.inputs import check_rtt

    return check_rtt(text, "RTT")


def _threshold(text: str) -> float:
    from pingllm_core.query.inputs import check_rtt

    value = check_rtt(text, "threshold", failed_ok=False)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"threshold must be above 0 ms, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of every subcommand."""
    from pingllm_core.query.inputs import parse_rtt_range

    start = (
        "Start with `pingllm info` (what the model was trained on, how well it did) and `pingllm examples`."
    )
    parser = _Parser(prog="pingllm", description="Ask a trained pingllm model about RTTs.",
                     epilog=f"{start}\n\n{CONTEXT_HELP}")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ckpt = _Parser(add_help=False)
    ckpt.add_argument("--checkpoint", type=Path, metavar="DIR",
                      help=f"checkpoint folder (default: ${CHECKPOINT_ENV}, else the newest under var/checkpoints)")  # fmt: skip
    ckpt.add_argument(
        "--json", action="store_true", help="print JSON (with a `warnings` list) instead of a table"
    )
    common = _Parser(add_help=False, parents=[ckpt])
    common.add_argument(
        "--context", metavar="FILE", help="your recent pings (CSV time,src,dst,rtt_ms; see below)"
    )
    mixed = _Parser(add_help=False)
    mixed.add_argument("--allow-mixed-family", action="store_true",
                       help="answer for addresses of different families (IPv4 and IPv6), which no ping measures")  # fmt: skip
    src = _Parser(add_help=False)
    src.add_argument("src", help="source address (the pinging host), IPv4 or IPv6")

    def command(name: str, help_: str, parents: list) -> argparse.ArgumentParser:
        epilog = CONTEXT_HELP if common in parents else None
        return sub.add_parser(name, parents=parents, help=help_, description=help_, epilog=epilog,
                              formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip

    p = command("predict", "RTT distribution and P(failure) for a ping from SRC to DST", [common, mixed, src])
    p.add_argument("dst", help="destination address, of the source's family")
    p.add_argument("--time", help="when the ping is sent: unix seconds or ISO 8601 (UTC if no offset)")
    p.add_argument("--quantiles", type=_quantiles, default=(0.1, 0.5, 0.9), metavar="Q,Q,...",
                   help="RTT quantiles to report, each strictly between 0 and 1 (default 0.1,0.5,0.9)")  # fmt: skip
    p.add_argument(
        "--plot", type=Path, metavar="FILE", help="also draw the RTT distribution (.png, .svg or .pdf)"
    )
    p.add_argument("--full-distribution", action="store_true",
                   help="with --json: every RTT code's probability (large), not only the coarse histogram")  # fmt: skip

    p = command("rank", "rank candidate destinations for SRC by predicted RTT", [common, mixed, src])
    p.add_argument("--candidates", type=Path, metavar="FILE",
                   help="one address per line, # starts a comment (default: read standard input)")  # fmt: skip
    p.add_argument("--time", help="when the pings are sent: unix seconds or ISO 8601 (UTC if no offset)")
    p.add_argument("--threshold", type=_type(_threshold), metavar="MS",
                   help="rank by P(success and RTT <= MS) instead of the median RTT")  # fmt: skip
    p.add_argument("--top", type=_top, metavar="N", help="show only the best N (default: all)")
    p.add_argument("--skip-bad-lines", action="store_true",
                   help="skip candidate lines that are not addresses of the source's family (with a warning)")  # fmt: skip

    p = command(
        "destinations", "likely destinations for SRC at an RTT (in SRC's family)", [common, mixed, src]
    )
    p.add_argument("rtt", type=_type(parse_rtt_range), metavar="RTT",
                   help="RTT in ms (e.g. 20) or a range LO-HI (e.g. 10-30), 0 < LO <= HI <= 600000")  # fmt: skip
    p.add_argument(
        "-n", type=_count, default=10, help=f"how many destinations, 1 to {MAX_RESULTS} (default 10)"
    )

    p = command(
        "when", "likely time of a ping SRC -> DST after your timestamped context", [common, mixed, src]
    )
    p.add_argument("dst", help="destination address, of the source's family")
    p.add_argument(
        "rtt", type=_type(_rtt), metavar="RTT", help="its RTT in ms (0 to 600000), or -1 if it failed"
    )
    p.add_argument("-k", type=_count, default=5, help=f"how many times, 1 to {MAX_RESULTS} (default 5)")

    p = command(
        "counterpart", "likely IPv6 address of the probe behind an IPv4 source, or back", [common, src]
    )
    p.add_argument("-n", type=_count, default=5, help=f"how many addresses, 1 to {MAX_RESULTS} (default 5)")

    command("info", "what the checkpoint was trained on and how well it did (its model card)", [ckpt])
    p = command("examples", "address pairs from the training data, to ask about", [ckpt])
    p.add_argument("-n", type=_count, default=10, help=f"how many pairs, 1 to {MAX_RESULTS} (default 10)")
    p.add_argument("--family", choices=("4", "6"), help="only IPv4 or only IPv6 pairs")
    return parser


COMMANDS = {
    "predict": cli_commands.cmd_predict,
    "rank": cli_commands.cmd_rank,
    "destinations": cli_commands.cmd_destinations,
    "when": cli_commands.cmd_when,
    "counterpart": cli_commands.cmd_counterpart,
    "info": cli_info.cmd_info,
    "examples": cli_info.cmd_examples,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `pingllm` console script; returns the exit code."""
    from pingllm_core.query.inputs import FamilyError, QueryError

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse already printed its one line (or the help)
        return EXIT_OK if exit_.code == 0 else EXIT_BAD_INPUT
    args.compile_cache = argv is None  # the console script; in-process callers keep their own JAX config
    try:
        COMMANDS[args.command](args)
    except FamilyError as err:
        hint = "" if args.command == "rank" else " (pass --allow-mixed-family to ask anyway)"
        print(f"pingllm {args.command}: {err}{hint}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (QueryError, CliError) as err:
        print(f"pingllm {args.command}: {err}", file=sys.stderr)
        return getattr(err, "code", EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        return EXIT_ERROR
    except Exception as err:  # our bug or the environment's: one line, the traceback only on request
        if os.environ.get("PINGLLM_DEBUG"):
            raise
        first = (str(err).strip().splitlines() or ["no details"])[0][:300]
        print(
            f"pingllm {args.command}: internal error: {first} (PINGLLM_DEBUG=1 shows where)", file=sys.stderr
        )
        return EXIT_ERROR
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
