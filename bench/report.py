"""The run's table on the terminal and its RESULTS.md: machine, versions, figures, ratios, targets."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bench.results import Results, Row, Target
from bench.stats import fmt, summary


def _cells(row: Row) -> list[str]:
    low, mid, high = summary(row.values)
    if not row.values:
        return ["-", "-", "-", "0"]
    return [fmt(low), fmt(mid), fmt(high), str(len(row.values))]


def text_table(results: Results, targets: Sequence[Target]) -> str:
    """A plain-text table of every row, then the targets."""
    header = ["figure", "system", "metric", "min", "median", "max", "n", "note"]
    lines = [header]
    for row in results.rows:
        lines.append([row.figure, row.system, row.metric, *_cells(row), row.note])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header) - 1)]
    out = []
    for line in lines:
        out.append("  ".join(str(cell).ljust(widths[i]) if i < len(widths) else str(cell)
                             for i, cell in enumerate(line)).rstrip())
        if line is header:
            out.append("  ".join("-" * w for w in widths))
    out.append("")
    out.append("targets")
    for target in targets:
        out.append(f"  {target.verdict:4}  {target.name}: {target.detail}")
    return "\n".join(out)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(results: Results, targets: Sequence[Target], facts: dict[str, str], command: str,
             duration_s: float, analysis: str = "") -> str:
    out = ["# Benchmark results", ""]
    out.append(f"Written by `{command}` on {facts.get('date', '?')} in {duration_s:.0f} s. Regenerate with "
               "`./dev.sh bench` (`--quick` for a tiny run, `--only roundtrip,open` for some figures). "
               "Absolute times drift on this shared machine; the ratios, taken in the same run with "
               "repetitions interleaved, are the comparison.")
    out += ["", "## Machine and versions", "", "| | |", "|---|---|"]
    out += [f"| {k} | {_md_escape(v)} |" for k, v in facts.items()]
    out += ["", "## Targets", "", "| verdict | target | measured |", "|---|---|---|"]
    out += [f"| **{t.verdict}** | {_md_escape(t.name)} | {_md_escape(t.detail)} |" for t in targets]
    out += ["", "## Figures", "",
            "Each value is min / median / max over the repetitions (n); a repetition of a latency "
            "percentile is one batch of calls."]
    figures = list(dict.fromkeys(r.figure for r in results.rows)) + \
        [f for f in results.notes if f not in {r.figure for r in results.rows}]
    for figure in figures:
        out += ["", f"### {figure}", "", "| system | metric | min | median | max | n | note |",
                "|---|---|---:|---:|---:|---:|---|"]
        for row in (r for r in results.rows if r.figure == figure):
            out.append(f"| {_md_escape(row.system)} | {_md_escape(row.metric)} | "
                       + " | ".join(_cells(row)) + f" | {_md_escape(row.note)} |")
        for note in results.notes.get(figure, []):
            out += ["", f"- {note}"]
    pairs = results.ratios()
    if pairs:
        out += ["", "## Ratios (taskkernel's median / the peer's median)", "",
                "| figure | metric | taskkernel | peer | ratio | better is |", "|---|---|---|---|---:|---|"]
        for mine, peer, ratio in pairs:
            out.append(f"| {mine.figure} | {_md_escape(mine.metric)} | {_md_escape(mine.system)} | "
                       f"{_md_escape(peer.system)} | {ratio:.3f} | {'higher' if mine.higher_is_better else 'lower'} |")
    if results.profiles:
        out += ["", "## Profiles (py-spy, `--profile`)", "",
                "Samples of CPU-active frames while HTTP round trips ran back to back; inclusive = the "
                "share of samples with the function on the stack, self = at its top. Waiting in a socket "
                "read shows as `_read_from_socket` (a Redis reply not yet in)."]
        for process, rows in results.profiles.items():
            out += ["", f"### {process}", "", "| inclusive % | self % | function (file) |", "|---:|---:|---|"]
            out += [f"| {inc:.1f} | {own:.1f} | {_md_escape(frame)} |" for inc, own, frame in rows]
    if analysis:
        out += ["", analysis.strip()]
    return "\n".join(out) + "\n"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
