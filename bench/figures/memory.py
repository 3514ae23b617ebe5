"""Figure 5. memory (a part of bench.figures.Bench)."""

from __future__ import annotations

import time

from bench import machine
from bench.figures.plan import F_MEM, OURS, PEER_A
from bench.services import descendants


class Memory:
    """Figure 5. memory: one method of `Bench`, which mixes this class in."""

    # --- 5. memory -------------------------------------------------------------------------------

    def figure_memory(self) -> None:
        plan, results = self.plan, self.results
        n = plan.memory_notebooks
        notebooks = self.ensure_notebooks(n)
        time.sleep(1.0)  # let every worker settle into idle
        workers = [nb.refresh()["worker"]["pid"] for nb in notebooks]
        # a notebook is its worker and everything below it: bubblewrap, the sandbox's init, the engine
        trees = [[pid, *descendants(pid)] for pid in workers]
        pids = [pid for tree in trees for pid in tree]
        mems = [machine.total_memory(tree) for tree in trees]
        supervisor = machine.process_memory(self.stack.supervisor_pid())
        one = "one idle notebook"
        total = f"{n} idle notebooks, total"
        results.add(F_MEM, OURS, f"USS, {one} (MiB)", "MiB", [m.uss for m in mems])
        results.add(F_MEM, OURS, f"PSS, {one} (MiB)", "MiB", [m.pss for m in mems])
        results.add(F_MEM, OURS, f"RSS, {one} (MiB)", "MiB", [m.rss for m in mems])
        results.add(F_MEM, OURS, f"USS, {total} (MiB)", "MiB", [sum(m.uss for m in mems)])
        results.add(F_MEM, OURS, f"PSS, {total} (MiB)", "MiB", [sum(m.pss for m in mems) + supervisor.pss])
        results.add(F_MEM, OURS + " supervisor", "RSS of the supervisor (MiB)", "MiB", [supervisor.rss])
        idle_cpu = f"CPU of {n} idle notebooks (% of one core)"
        results.add(F_MEM, OURS, idle_cpu, "%", [machine.idle_cpu_percent(pids, plan.idle_cpu_s)])
        self.log(f"memory {OURS}: USS per notebook (worker + engine) median "
                 f"{sorted(m.uss for m in mems)[len(mems) // 2]:.1f} MiB")
        if self.a_missing:
            results.missing(F_MEM, PEER_A, f"USS, {one} (MiB)", "MiB", self.a_missing)
        else:
            kernels = self.ensure_kernels(n)
            time.sleep(1.0)
            kmems = [machine.process_memory(k.pid) for k in kernels]
            results.add(F_MEM, PEER_A, f"USS, {one} (MiB)", "MiB", [m.uss for m in kmems])
            results.add(F_MEM, PEER_A, f"PSS, {one} (MiB)", "MiB", [m.pss for m in kmems])
            results.add(F_MEM, PEER_A, f"RSS, {one} (MiB)", "MiB", [m.rss for m in kmems])
            results.add(F_MEM, PEER_A, f"USS, {total} (MiB)", "MiB", [sum(m.uss for m in kmems)])
            results.add(F_MEM, PEER_A, f"PSS, {total} (MiB)", "MiB", [sum(m.pss for m in kmems)])
            results.add(F_MEM, PEER_A, idle_cpu, "%",
                        [machine.idle_cpu_percent([k.pid for k in kernels], plan.idle_cpu_s)])
            self.log(f"memory {PEER_A}: USS per kernel median {sorted(m.uss for m in kmems)[len(kmems) // 2]:.1f} MiB")
            for kernel in self.kernels:  # free the memory before the scale figure
                kernel.close()
            self.kernels = []
        results.note(F_MEM, f"read from /proc/<pid>/smaps_rollup (USS = Private_Clean + Private_Dirty) of {n} "
                            "notebooks (the worker, pid from the notebook record, plus its descendants: "
                            "bubblewrap, the sandbox's init and the engine process) and of as many ipykernels, each "
                            "idle after having run cells; 'one idle notebook' gives min/median/max over them; "
                            "taskkernel's PSS total includes the supervisor that the workers share pages with; "
                            f"idle CPU is user + system time over {plan.idle_cpu_s:g} s from /proc/<pid>/stat")
