"""Figure 4. streaming (a part of bench.figures.Bench)."""

from __future__ import annotations

import time

from bench.figures.plan import F_STREAM, OURS, PEER_A, PEER_B
from bench.taskkernel_side import stream_lines


class Streaming:
    """Figure 4. streaming: one method of `Bench`, which mixes this class in."""

    # --- 4. streaming ----------------------------------------------------------------------------

    def figure_streaming(self) -> None:
        plan, results = self.plan, self.results
        nb = self.main_notebook()
        kernel_a, kernel_b = self.peer_a(), self.peer_b()
        for n in plan.stream_lines:
            metric = f"{n:,} lines: until the subscriber holds all (s)"
            flag = f"{n:,} lines delivered completely (1 = yes)"
            expected = "".join(f"{i}\n" for i in range(n))
            code = f"for i in range({n}):\n    print(i)"
            for name, why in ((PEER_A, self.a_missing), (PEER_B, self.b_missing)):
                if why:
                    results.missing(F_STREAM, name, metric, "s", why)
            for rep in range(plan.reps):
                got = stream_lines(self.stack.redis_server.url, self.stack.api_port, nb.id, n)
                results.add(F_STREAM, OURS, metric, "s", [got.seconds])
                results.add(F_STREAM, OURS, flag, "flag", [1 if got.complete else 0])
                self.log(f"streaming {n} rep {rep + 1} {OURS}: {got.seconds:.3f} s, complete={got.complete}")
                for name, kernel in ((PEER_A, kernel_a), (PEER_B, kernel_b)):
                    if kernel is None:
                        continue
                    start = time.perf_counter()
                    outcome = kernel.execute(code, timeout_s=300, want_lines=n, keep_text=True)
                    seconds = (outcome.all_lines_at - start) if outcome.all_lines_at else float("nan")
                    complete = "".join(outcome.text) == expected
                    results.add(F_STREAM, name, metric, "s", [seconds])
                    results.add(F_STREAM, name, flag, "flag", [1 if complete else 0])
                    self.log(f"streaming {n} rep {rep + 1} {name}: {seconds:.3f} s, complete={complete}")
        results.note(F_STREAM, "a cell `for i in range(N): print(i)`; the clock starts before the request is "
                               "sent and stops when the subscriber (taskkernel: Redis pub/sub on the notebook's "
                               "feed channel; A: the iopub socket; B: the websocket) has received the N-th line; "
                               "`complete` compares every byte received with what was printed")
