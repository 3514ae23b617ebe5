"""The figures of a run (one row per system and metric, one value per repetition) and the targets."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bench.stats import summary

OURS = "taskkernel"


@dataclass
class Row:
    """One measured quantity of one system: a value per repetition, or why there is none."""

    figure: str
    system: str
    metric: str
    unit: str
    values: list[float] = field(default_factory=list)
    note: str = ""
    higher_is_better: bool = False

    @property
    def median(self) -> float:
        return summary(self.values)[1]

    @property
    def ours(self) -> bool:
        return self.system.startswith(OURS)


@dataclass
class Target:
    """`ours` must be <= factor x `peer` (or, without a peer, >= / == an absolute bound)."""

    name: str
    figure: str
    metric: str
    ours: str
    peer: str | None = None
    factor: float = 1.0
    at_least: float | None = None  # absolute lower bound on ours (scale)
    require_all_true: bool = False  # ours' values are 1/0 flags that must all be 1
    higher_is_better: bool = False  # then peer <= factor x ours is judged (a pass count)
    skip: str = ""  # why this run does not judge the target
    verdict: str = ""
    ratio: float | None = None
    detail: str = ""


class Results:
    """Every row of a run, in the order measured."""

    def __init__(self):
        self.rows: list[Row] = []
        self.notes: dict[str, list[str]] = {}
        self.profiles: dict[str, list[tuple[float, float, str]]] = {}

    def add(self, figure: str, system: str, metric: str, unit: str, values=None, note: str = "",
            higher_is_better: bool = False) -> Row:
        row = self.find(figure, system, metric)
        if row is None:
            row = Row(figure, system, metric, unit, [], note, higher_is_better)
            self.rows.append(row)
        if values:
            row.values.extend(float(v) for v in values)
        if note:
            row.note = note
        return row

    def missing(self, figure: str, system: str, metric: str, unit: str, why: str) -> Row:
        """A row that could not be measured, with the reason shown in the table."""
        return self.add(figure, system, metric, unit, note=why)

    def note(self, figure: str, text: str) -> None:
        self.notes.setdefault(figure, []).append(text)

    def find(self, figure: str, system: str, metric: str) -> Row | None:
        return next((r for r in self.rows if (r.figure, r.system, r.metric) == (figure, system, metric)), None)

    def ratios(self) -> list[tuple[Row, Row, float]]:
        """(ours, peer, ours' median / peer's median) for every peer row with the same figure and metric."""
        pairs = []
        for mine in self.rows:
            if not mine.ours or not mine.values:
                continue
            for other in self.rows:
                if other.ours or other.figure != mine.figure or other.metric != mine.metric or not other.values:
                    continue
                if other.median and not math.isnan(other.median):
                    pairs.append((mine, other, mine.median / other.median))
        return pairs

    def judge(self, targets: list[Target]) -> list[Target]:
        for target in targets:
            if target.skip:
                target.verdict, target.detail = "n/a", target.skip
                continue
            mine = self.find(target.figure, target.ours, target.metric)
            if mine is None or not mine.values:
                target.verdict = "n/a"
                target.detail = (mine.note if mine is not None else "") or "not measured"
                continue
            if target.require_all_true:
                ok = all(v == 1 for v in mine.values)
                target.verdict = "PASS" if ok else "MISS"
                target.detail = f"{sum(1 for v in mine.values if v == 1)}/{len(mine.values)} runs complete"
                continue
            if target.at_least is not None:
                target.verdict = "PASS" if mine.median >= target.at_least else "MISS"
                target.detail = f"{mine.median:g} (target >= {target.at_least:g})"
                continue
            peer = self.find(target.figure, target.peer, target.metric)
            if peer is None or not peer.values:
                target.verdict = "n/a"
                target.detail = (peer.note if peer is not None else "") or "peer not measured"
                continue
            if target.higher_is_better:
                target.ratio = peer.median / mine.median if mine.median else math.inf
                target.verdict = "PASS" if target.ratio <= target.factor else "MISS"
                target.detail = (f"{mine.median:.4g} / {peer.median:.4g} {mine.unit} "
                                 f"(target: at least {1 / target.factor:g} x the peer's)")
                continue
            target.ratio = mine.median / peer.median
            target.verdict = "PASS" if target.ratio <= target.factor else "MISS"
            target.detail = (f"{mine.median:.4g} / {peer.median:.4g} {mine.unit} = {target.ratio:.3f} "
                             f"(target <= {target.factor:g})")
        return targets
