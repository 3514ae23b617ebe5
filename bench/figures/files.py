"""Figure 9. files (a part of bench.figures.Bench)."""

from __future__ import annotations

from bench import files as bench_files


class Files:
    """Figure 9. files: one method of `Bench`, which mixes this class in."""

    # --- 9. files ---------------------------------------------------------------------------------

    def figure_files(self) -> None:
        """100 MB up and down a notebook's directory against curl of a static file (bench/files.py)."""
        bench_files.measure(self.stack, self.processes, self.results, size_mb=bench_files.size_mb(self.plan.quick),
                            reps=self.plan.reps, log=self.log)
