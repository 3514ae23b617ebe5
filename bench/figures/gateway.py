"""Figure 10, 11. the Jupyter gateway (bench/gateway.py) (a part of bench.figures.Bench)."""

from __future__ import annotations



class Gateway:
    """Figure 10, 11. the Jupyter gateway (bench/gateway.py): one method of `Bench`, which mixes this class in."""

    # --- 10, 11. the Jupyter gateway (bench/gateway.py) -------------------------------------------

    def figure_gateway(self) -> None:
        from bench import gateway

        gateway.figure(self)
