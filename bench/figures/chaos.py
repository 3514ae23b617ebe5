"""Figure 13. chaos (bench/chaos.py) (a part of bench.figures.Bench)."""

from __future__ import annotations


class Chaos:
    """Figure 13. chaos: every fault of bench/chaos.py, each on services of its own."""

    def figure_chaos(self) -> None:
        from bench import chaos

        chaos.figure(self)
