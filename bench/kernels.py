"""`python -m bench.kernels`: a Jupyter kernel as an engine (an engine file's `kernelspec`), measured.

In one run, interleaved repetition by repetition: the `1+1` round trip (HTTP evaluate with wait)
and the memory of an idle notebook for the engine that runs ipykernel's own `python3` kernelspec
(`pykernel`), for the ipython engine, and for plain ipykernel driven by jupyter_client (peer A of
the main suite); with bash_kernel installed, `echo 1` on the `bash` engine against bash_kernel
driven the same way. A notebook's memory is its worker and everything below it (bubblewrap, the
sandbox's init, the engine process and, for a kernel engine, the kernel and its children).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import machine
from bench.jupyter import IPyKernel
from bench.services import Processes, Stack, descendants, wait_until
from bench.stats import percentile
from bench.taskkernel_side import HttpEvaluator
from taskkernel import keys
from taskkernel.settings import SOURCE_CONFIG_DIR

ENGINE_FILES = {
    "pykernel": 'name = "pykernel"\nlanguage = "python"\nkernelspec = "python3"\n',
    "bash": 'name = "bash"\nlanguage = "bash"\nkernelspec = "bash"\n',
}


def _config(root: Path, with_bash: bool) -> Path:
    config = root / "config"
    shutil.copytree(SOURCE_CONFIG_DIR, config)
    (config / "engines" / "python.toml").unlink()  # not measured: no warm pool of it
    for name, text in ENGINE_FILES.items():
        if name != "bash" or with_bash:
            (config / "engines" / f"{name}.toml").write_text(text)
    return config


def _bash_kernelspec(root: Path) -> Path | None:
    if importlib.util.find_spec("bash_kernel") is None:
        return None
    subprocess.run([sys.executable, "-m", "bash_kernel.install", "--prefix", str(root / "prefix")],
                   check=True, capture_output=True, timeout=60)
    return root / "prefix" / "share" / "jupyter"


def _ms(samples: list[float]) -> str:
    return f"{percentile(samples, 50) * 1000:.2f} ms (p90 {percentile(samples, 90) * 1000:.2f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kernels", description=__doc__)
    parser.add_argument("--runs", type=int, default=100, help="round trips per system and repetition")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions")
    parser.add_argument("--notebooks", type=int, default=3, help="idle notebooks (and kernels) measured for memory")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench-kernels-"))
    jupyter_path = _bash_kernelspec(root)
    engines = ["ipython", "pykernel"] + (["bash"] if jupyter_path else [])
    processes = Processes()
    if jupyter_path:
        os.environ["JUPYTER_PATH"] = str(jupyter_path)  # the supervisor's, and peer bash_kernel's
    stack = Stack(processes, pool=args.notebooks + 1)
    stack.settings = stack.settings.replace(config_dir=str(_config(root, bool(jupyter_path))))
    kernels: list[IPyKernel] = []
    try:
        _start(stack, engines)
        client = stack.client()
        notebooks = {engine: [client.start(engine) for _ in range(args.notebooks)] for engine in engines}
        for engine, nbs in notebooks.items():
            for nb in nbs:
                nb.evaluate("echo 1" if engine == "bash" else "1+1")
        peers = {"python3": [], "bash": []}
        for name in peers if jupyter_path else ["python3"]:
            for _ in range(args.notebooks):
                kernel = IPyKernel(processes.dir / "jupyter-runtime")
                kernel.manager.kernel_name = name
                kernels.append(kernel.start())
                kernel.wait_ready()
                kernel.execute("echo 1" if name == "bash" else "1+1")
                peers[name].append(kernel)
        http = HttpEvaluator(stack.api_port)
        bodies = {e: json.dumps({"code": "echo 1" if e == "bash" else "1+1", "wait": True}).encode()
                  for e in engines}
        samples: dict[str, list[float]] = {e: [] for e in engines}
        samples.update({f"peer {n}": [] for n, ks in peers.items() if ks})
        for _ in range(args.reps):
            for engine in engines:
                nb = notebooks[engine][0]
                for _ in range(args.runs):
                    started = time.perf_counter()
                    http.evaluate(nb.id, bodies[engine])
                    samples[engine].append(time.perf_counter() - started)
            for name, ks in peers.items():
                for _ in range(args.runs if ks else 0):
                    started = time.perf_counter()
                    ks[0].execute("echo 1" if name == "bash" else "1+1")
                    samples[f"peer {name}"].append(time.perf_counter() - started)
        time.sleep(1.0)  # every notebook idle
        memory: dict[str, list[machine.Memory]] = {}
        kernel_part: dict[str, list[machine.Memory]] = {}  # of a kernel engine's notebook: the kernel's tree
        for engine, nbs in notebooks.items():
            workers = [nb.refresh()["worker"]["pid"] for nb in nbs]
            memory[engine] = [machine.total_memory([pid, *descendants(pid)]) for pid in workers]
            if engine != "ipython":
                kernel_part[engine] = [machine.total_memory(descendants(_engine_of(pid))) for pid in workers]
        for name, ks in peers.items():
            if ks:
                memory[f"peer {name}"] = [machine.total_memory([k.pid, *descendants(k.pid)]) for k in ks]
        labels = {"ipython": "taskkernel, ipython engine", "pykernel": "taskkernel, python3 kernelspec engine",
                  "bash": "taskkernel, bash kernelspec engine (`echo 1`)", "peer python3": "ipykernel (jupyter_client)",
                  "peer bash": "bash_kernel (jupyter_client, `echo 1`)"}
        print(f"\n`python -m bench.kernels {' '.join(argv if argv is not None else sys.argv[1:])}`, "
              f"{args.reps} x {args.runs} round trips, {args.notebooks} idle notebooks; "
              f"load average at end {machine.load_average()}\n")
        print("| system | round trip p50 | idle notebook USS / PSS (MiB, median) | of which the kernel's processes |")
        print("|---|---|---|---|")
        for key, label in labels.items():
            if key in samples:
                mid = _median(memory[key])
                part = f"{_median(kernel_part[key]).uss:.1f} / {_median(kernel_part[key]).pss:.1f}" \
                    if key in kernel_part else ""
                print(f"| {label} | {_ms(samples[key])} | {mid.uss:.1f} / {mid.pss:.1f} | {part} |")
        return 0
    finally:
        for kernel in kernels:
            try:
                kernel.close()
            except Exception:
                pass
        stack.close()
        processes.stop_all()
        shutil.rmtree(root, ignore_errors=True)


def _median(mems: list[machine.Memory]) -> machine.Memory:
    return sorted(mems, key=lambda m: m.uss)[len(mems) // 2]


def _engine_of(worker: int) -> int:
    """The engine process below a worker: worker -> bubblewrap -> the sandbox's init -> engine."""
    pid = worker
    for _ in range(3):
        pid = int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])
    return pid


def _start(stack: Stack, engines: list[str]) -> None:
    """Stack.start, then wait for every measured engine's pool (Stack itself waits for python's)."""
    stack.idle_count = lambda: min(stack.redis.scard(keys.idle_workers(e, stack.host_name)) for e in engines)
    stack.start()
    wait_until(lambda: stack.idle_count() >= stack.pool, 120, "idle workers of every engine")


if __name__ == "__main__":
    sys.exit(main())
