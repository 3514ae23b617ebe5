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


def _split_figures(text: str) -> tuple[str, list[tuple[str, str]], str]:
    """(everything up to the first figure, [(title, section)], everything after the last figure)."""
    start = text.find("\n## Figures")
    if start < 0:
        return text, [], ""
    first = text.find("\n### ", start)
    after = text.find("\n## ", start + 1)
    after = len(text) if after < 0 else after
    if first < 0 or first > after:
        return text[:after], [], text[after:]
    sections = []
    body = text[first:after]
    for chunk in body.split("\n### ")[1:]:
        title = chunk.split("\n", 1)[0]
        sections.append((title, "\n### " + chunk))
    return text[:first], sections, text[after:]


def _target_rows(text: str) -> dict[str, str]:
    """{target name: its row} of a RESULTS.md's Targets table."""
    rows = {}
    for line in text.split("\n## Targets", 1)[-1].split("\n## ", 1)[0].splitlines():
        if line.startswith("| **"):
            rows[line.split(" | ")[1]] = line
    return rows


def splice(existing: str, fresh: str, origin: str) -> str:
    """`existing` (a RESULTS.md) with the figures and targets of `fresh` (a run of some figures, as
    `markdown` wrote it) in place of theirs, or added; every other figure, target and the analysis
    are kept. Each spliced figure and target says where it comes from (`origin`)."""
    head, sections, tail = _split_figures(existing)
    _, new_sections, _ = _split_figures(fresh)
    by_title = dict(sections)
    for title, section in new_sections:
        by_title[title] = section.rstrip("\n") + f"\n\n- {origin}\n"
    order = [title for title, _ in sections] + [t for t, _ in new_sections if t not in dict(sections)]
    new_targets = _target_rows(fresh)
    old_targets = _target_rows(existing)
    for name, row in new_targets.items():
        if row.startswith("| **n/a** |"):  # a target of a figure not in this run keeps its old verdict
            continue
        verdict, _, rest = row.partition("** | ")
        marked = f"{verdict}** (spliced run) | {rest}"
        if name in old_targets:
            head = head.replace(old_targets[name], marked, 1)
            old_targets[name] = marked
        else:  # after the table's last row
            last = list(old_targets.values())[-1] if old_targets else "|---|---|---|"
            head = head.replace(last, last + "\n" + marked, 1)
            old_targets[name] = marked
    return head + "".join(by_title[title] for title in order) + tail


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
