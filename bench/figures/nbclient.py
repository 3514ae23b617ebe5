"""Figure 12. nbclient's own test suite (a part of bench.figures.Bench)."""

from __future__ import annotations

from bench.figures.plan import BRIDGE, F_NBCLIENT, NBCLIENT_PASSED, PEER_A


class NbClient:
    """Figure 12. nbclient's own test suite: one method of `Bench`, which mixes this class in."""

    # --- 12. nbclient's own test suite ------------------------------------------------------------

    def figure_nbclient(self) -> None:
        """nbclient's tests/test_client.py (fetched from PyPI) on ipykernel and on the bridge, one
        engine after the other, in this run (see bench/nbclient_suite.py)."""
        from bench import nbclient_suite

        results = self.results
        systems = [(PEER_A, None), (f"{BRIDGE}, ipython engine", "ipython"), (f"{BRIDGE}, python engine", "python")]
        why = "not run with --quick (the suite takes minutes)" if self.plan.quick else nbclient_suite.missing_tools()
        if why:
            for system, _ in systems:
                results.missing(F_NBCLIENT, system, NBCLIENT_PASSED, "tests", why)
            return
        workdir = self.processes.dir / "nbclient-suite"
        suite = nbclient_suite.fetch_suite(workdir / "sdist")
        for system, engine in systems:
            jupyter_path = None
            if engine is not None:
                jupyter_path = nbclient_suite.install_as_python3(self.stack.url, engine, workdir / f"spec-{engine}")
            run = nbclient_suite.run_suite(suite, system, workdir / (engine or "ipykernel"), jupyter_path)
            self.log(run.line())
            results.add(F_NBCLIENT, system, NBCLIENT_PASSED, "tests", [run.passed],
                        note=f"of {run.total}; {run.failed} failed, {run.errors} errors {run.note}".strip(),
                        higher_is_better=True)
            if run.failures:
                results.note(F_NBCLIENT, f"fails on {engine or 'ipykernel'}: " + "; ".join(run.failures))
        results.note(F_NBCLIENT, f"nbclient {suite.name.split('-')[-1]}'s sdist from PyPI, its tests/test_client.py "
                                 "run with its own pytest configuration; for taskkernel the bridge kernelspec is "
                                 "installed as `python3` in a private JUPYTER_PATH, so every kernel the suite starts "
                                 "runs its cells on this run's service; one run per system (a count, not a timing)")
