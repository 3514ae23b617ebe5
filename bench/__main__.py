"""`python -m bench [--quick] [--only NAMES] [--output PATH]`: run the suite, print the table, write RESULTS.md."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from bench import report
from bench.figures import FIGURES, FULL, QUICK, Bench, targets

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "RESULTS.md"
ANALYSIS = Path(__file__).resolve().parent / "ANALYSIS.md"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny counts (a smoke run of a minute or two)")
    parser.add_argument("--only", help=f"comma-separated figures out of: {', '.join(FIGURES)}")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where RESULTS.md goes")
    parser.add_argument("--profile", action="store_true",
                        help="also sample the API and a worker with py-spy during round trips")
    parser.add_argument("--no-peers", action="store_true", help="measure taskkernel and the floors only")
    parser.add_argument("--reps", type=int, help="repetitions of every figure")
    parser.add_argument("--runs", type=int, help="round trips per repetition")
    parser.add_argument("--scale-steps", help="comma-separated notebook counts for the scale figure")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    steps = tuple(int(s) for s in args.scale_steps.split(",")) if args.scale_steps else None
    plan = plan.with_counts(reps=args.reps, rt_runs=args.runs, scale_steps=steps)
    figures = FIGURES
    if args.only:
        figures = tuple(name.strip() for name in args.only.split(",") if name.strip())
        unknown = [name for name in figures if name not in FIGURES]
        if unknown:
            print(f"unknown figures {unknown}; choose from {', '.join(FIGURES)}", file=sys.stderr)
            return 2
    # SIGTERM unwinds like Ctrl-C, so every service this run started is stopped by its `finally`
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = time.monotonic()
    bench = Bench(plan, figures, peers=not args.no_peers, profile=args.profile)
    results = bench.run()
    judged = results.judge(targets(plan))
    duration = time.monotonic() - started
    print(report.text_table(results, judged))
    command = "python -m bench" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    analysis = ANALYSIS.read_text() if ANALYSIS.exists() and not args.quick else ""
    text = report.markdown(results, judged, bench.facts, command.strip(), duration, analysis)
    if args.only and args.output.exists() and not args.quick:  # some figures: into the others, not over them
        origin = (f"taken by `{command.strip()}` on {bench.facts.get('date', '?')} in {duration:.0f} s, spliced in "
                  f"here (load average at start {bench.facts.get('load average at start', '?')}, at end "
                  f"{bench.facts.get('load average at end', '?')})")
        text = report.splice(args.output.read_text(), text, origin)
    report.write(args.output, text)
    print(f"\nwrote {args.output} ({duration:.0f} s)")
    failed = [figure for figure in results.notes if any(n.startswith("failed:") for n in results.notes[figure])]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
