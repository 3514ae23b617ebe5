"""Live-cell figures: publishes for 100,000 printed lines, interrupt latency, death-to-answer time.

Run: `python -m bench.live` (starts its own Redis, supervisor and API; stops them by PID).
"""

from __future__ import annotations

import statistics
import time

from bench.services import Processes, Stack


def main() -> int:
    processes = Processes()
    try:
        stack = Stack(processes, pool=2).start()
        nb = stack.client().start()
        started = time.perf_counter()
        cell = nb.evaluate("for i in range(100_000):\n    print(i)", timeout=120)
        elapsed = time.perf_counter() - started
        streams = [m for m in nb.feed(timeout=1) if m["header"]["msg_type"] == "stream"]
        print(f"100,000 lines: {len(streams)} stream messages (publishes), {len(cell['stdout'])} chars kept, "
              f"cell round trip {elapsed:.2f} s")
        for label, code in (("busy loop", "while True:\n    pass"), ("time.sleep", "import time\ntime.sleep(1000)")):
            latencies = []
            for _ in range(5):
                running = nb.evaluate(code, wait=False)
                while nb.cell(running["id"])["state"] != "running":
                    time.sleep(0.01)
                time.sleep(0.1)
                asked = time.perf_counter()
                nb.interrupt()
                nb.wait(running["id"], poll_s=0.005)
                latencies.append(time.perf_counter() - asked)
            print(f"interrupt of a {label}: median {1000 * statistics.median(latencies):.1f} ms "
                  f"(min {1000 * min(latencies):.1f}, max {1000 * max(latencies):.1f}, 5 runs)")
        deaths = []
        for _ in range(3):
            asked = time.perf_counter()
            died = nb.evaluate("import os; os._exit(1)")
            deaths.append(time.perf_counter() - asked)
            assert died["error"]["ename"] == "EngineDied"
            while not nb.refresh()["worker"]:
                time.sleep(0.01)
        print(f"os._exit(1) to an EngineDied answer for a waiting caller: median {1000 * statistics.median(deaths):.0f} ms "
              "(3 runs)")
        nb.close()
        stack.close()
    finally:
        processes.stop_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
