"""bench/report.py: a run of some figures is spliced into RESULTS.md without losing the others."""

from bench import report
from bench.results import Results, Target


def results_md(rows: dict[str, float], targets: list[Target], command: str) -> str:
    results = Results()
    for figure, value in rows.items():
        results.add(figure, "taskkernel", "p50 (ms)", "ms", [value])
    judged = results.judge(targets)
    return report.markdown(results, judged, {"date": "today"}, command, 1.0, analysis="## Analysis\n\nby hand")


def test_a_run_of_some_figures_replaces_theirs_and_keeps_every_other():
    old = results_md({"1. a": 1.0, "2. b": 2.0, "3. c": 3.0},
                     [Target("fast", "2. b", "p50 (ms)", "taskkernel", at_least=0),
                      Target("quick", "1. a", "p50 (ms)", "taskkernel", at_least=0)], "python -m bench")
    fresh = results_md({"2. b": 20.0, "13. chaos": 13.0},
                       [Target("fast", "2. b", "p50 (ms)", "taskkernel", at_least=100),
                        Target("quick", "1. a", "p50 (ms)", "taskkernel", at_least=0),  # not measured: n/a
                        Target("new", "13. chaos", "p50 (ms)", "taskkernel", at_least=0)], "python -m bench --only b")
    spliced = report.splice(old, fresh, "from the second run")
    titles = [line for line in spliced.splitlines() if line.startswith("### ")]
    assert titles == ["### 1. a", "### 2. b", "### 3. c", "### 13. chaos"]
    assert "| 1.00 |" in spliced and "| 3.00 |" in spliced and "| 2.00 |" not in spliced and "| 20.0 |" in spliced
    assert spliced.count("- from the second run") == 2
    assert "| **MISS** (spliced run) | fast |" in spliced and "| **PASS** | fast |" not in spliced
    assert "| **PASS** (spliced run) | new |" in spliced
    assert "| **PASS** | quick |" in spliced, "a target this run did not measure keeps its verdict"
    assert spliced.rstrip().endswith("by hand") and spliced.count("## Analysis") == 1
