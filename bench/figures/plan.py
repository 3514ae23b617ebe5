"""What the benchmark measures and how often: the figures, their labels, the full and quick plans."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from bench import files as bench_files


FIGURES = ("roundtrip", "completion", "streaming", "open", "throughput", "memory", "scale", "bridge", "files",
           "gateway", "nbclient", "chaos")

F_RT = "1. round trip of `1+1`"
F_OPEN = "2. notebook open"
F_TP = "3. throughput"
F_STREAM = "4. streaming"
F_MEM = "5. memory"
F_SCALE = "6. scale"
F_COMPLETE = "7. completion"
F_BRIDGE = "8. Jupyter bridge"
NOTEBOOK_CELLS = 20
NOTEBOOK_METRIC = f"whole notebook of {NOTEBOOK_CELLS} cells, nbclient (ms)"
F_NBCLIENT = "12. nbclient's test suite"
NBCLIENT_PASSED = "tests passed"
BRIDGE = "taskkernel kernel (Jupyter bridge, jupyter_client)"

OURS_HTTP = "taskkernel (HTTP evaluate, wait)"
OURS_CLIENT = "taskkernel (Python client)"
OURS = "taskkernel"
PEER_A = "A: ipykernel (jupyter_client, ZMQ)"
PEER_B = "B: kernel gateway (REST + websocket)"
PEER_B_QUICKACK = "B': kernel gateway, client with TCP_QUICKACK"
FLOOR_ECHO = "floor: Flask JSON echo (same gunicorn)"
FLOOR_PING = "floor: Redis PING"
FLOOR_PUBSUB = "floor: Redis PUBLISH -> subscriber"

TITLES = {"roundtrip": F_RT, "open": F_OPEN, "throughput": F_TP, "streaming": F_STREAM, "memory": F_MEM,
          "scale": F_SCALE, "completion": F_COMPLETE, "bridge": F_BRIDGE, "files": bench_files.FIGURE,
          "nbclient": F_NBCLIENT}
TITLES["gateway"] = "10. Jupyter gateway"  # bench/gateway.py: figures 10 and 11 (9 is the files figure)
TITLES["chaos"] = "13. chaos"  # bench/chaos.py: its own services, one per fault

COMPLETION_CODE = "import math; math.sq"


@dataclass(frozen=True)
class Plan:
    """How much of everything a run measures."""

    quick: bool
    reps: int  # repetitions of every figure (interleaved across systems)
    rt_runs: int  # round trips per repetition and system
    rt_warmup: int
    batch_timeout_s: float  # a batch of round trips stops early past this
    open_runs: int  # warm opens per repetition
    cold_runs: int  # cold opens per repetition (ours, ipykernel, gateway)
    throughput_notebooks: int
    throughput_threads: int
    throughput_cells: int  # cells per repetition
    stream_lines: tuple[int, ...]
    memory_notebooks: int
    scale_steps: tuple[int, ...]
    scale_rate_per_s: float
    scale_load_s: float
    scale_open_timeout_s: float  # per step
    scale_p99_ms: float
    completion_runs: int
    pool: int = 2  # the default warm pool of `taskkernel up`
    profile_s: float = 10  # py-spy sampling time with --profile
    idle_cpu_s: float = 5  # how long idle notebooks' CPU use is measured

    def with_counts(self, **changes) -> "Plan":
        import dataclasses

        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


FULL = Plan(quick=False, reps=3, rt_runs=500, rt_warmup=30, batch_timeout_s=90, open_runs=4, cold_runs=2,
            throughput_notebooks=50, throughput_threads=8, throughput_cells=1000,
            stream_lines=(10_000, 100_000), memory_notebooks=50, scale_steps=(50, 100, 150, 200, 250),
            scale_rate_per_s=10, scale_load_s=30, scale_open_timeout_s=120, scale_p99_ms=50,
            completion_runs=50)

QUICK = Plan(quick=True, reps=2, rt_runs=20, rt_warmup=3, batch_timeout_s=20, open_runs=1, cold_runs=1,
             throughput_notebooks=3, throughput_threads=2, throughput_cells=30,
             stream_lines=(10_000, 100_000), memory_notebooks=3, scale_steps=(5,),
             scale_rate_per_s=10, scale_load_s=3, scale_open_timeout_s=60, scale_p99_ms=50,
             completion_runs=5, profile_s=3, idle_cpu_s=1)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start

