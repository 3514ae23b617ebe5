"""Every Redis key, pub/sub channel and Celery queue name taskkernel uses, on one screen.

    taskkernel:notebooks                 zset   notebook ids by creation time
    taskkernel:orphans                   zset   notebooks waiting for a fresh worker, by time
    taskkernel:engine_counts             hash   engine -> open notebooks (for quotas)
    taskkernel:leases                    zset   notebooks opened with a lease, by when it runs out
    taskkernel:nb:<nb>                   hash   the notebook record (engine, worker, state, counts)
                                                (files_from: a restart's files on their way)
    taskkernel:nb:<nb>:cells             list   cell ids in submission order
    taskkernel:nb:<nb>:pending           list   cell ids queued and not yet started
    taskkernel:nb:<nb>:seq               string feed sequence number of the notebook
    taskkernel:nb:<nb>:idem:<sha256>     string the cell an Idempotency-Key submitted (expires)
    taskkernel:cell:<cell>               hash   the cell record (code, state, outputs, ...)
    taskkernel:checkpoint:<nb>           hash   the last checkpoint: v:<name> -> pickle/dill bytes, meta
    taskkernel:feed:<nb>                 channel the notebook's live feed (JSON Jupyter messages)
    taskkernel:stream:<nb>               stream the same messages, capped, for replay and waiting
    taskkernel:worker:<w>                hash   a worker process (host, pid, engine, queue, state, notebook, cell)
                                                (and files_socket, files_boot: its local file socket)
    taskkernel:worker:<w>:rpc            list   side-channel requests (complete, inspect, interrupt, ...)
    taskkernel:reply:<request>           list   one side-channel answer
    taskkernel:worker:<w>:files          list   file requests for the worker's file service (put, get, list, ...)
    taskkernel:transfer:<t>:up           list   one file transfer's frames to the worker (chunks, credits; expires)
    taskkernel:transfer:<t>:down         list   the same transfer's frames from the worker (replies, chunks)
    taskkernel:idle:<engine>:<host>      set    idle warm workers of an engine on a host
    taskkernel:hosts                     set    supervisor host names
    taskkernel:host:<host>               hash   a host's pools and counts; expires unless heartbeated
    taskkernel:host:<host>:commands      list   commands for that host's supervisor (retire, scale, refill)
    taskkernel:host:<host>:recovery      string lock: the supervisor re-homing a dead host's notebooks
    taskkernel:host:<host>:beats         string the host's heartbeat counter (observers judge death by it)
    taskkernel:host:<host>:workers       set    worker ids the host's supervisor forked and has not reaped
    taskkernel:metrics:cells             hash   cells run, by status (ok/error), counted by the runtime
    taskkernel:metrics:cell_seconds      hash   cell wall time: a count per histogram bucket bound, and "sum"
    taskkernel:gateways                  zset   live gateway processes, by when their registration runs out
    taskkernel:gateway:<g>:connections   hash   notebook -> websockets gateway process <g> holds open on it
    celery queue  taskkernel.<host>.<slot>      one per worker slot, a bounded set per host
                                                (kombu's lists and bindings of it: taskkernel.celery_wire)
"""

from __future__ import annotations

PREFIX = "taskkernel"

NOTEBOOKS = f"{PREFIX}:notebooks"
HOSTS = f"{PREFIX}:hosts"
ORPHANS = f"{PREFIX}:orphans"
ENGINE_COUNTS = f"{PREFIX}:engine_counts"
LEASES = f"{PREFIX}:leases"
METRICS_CELLS = f"{PREFIX}:metrics:cells"
METRICS_CELL_SECONDS = f"{PREFIX}:metrics:cell_seconds"
GATEWAYS = f"{PREFIX}:gateways"


def notebook(nb: str) -> str:
    return f"{PREFIX}:nb:{nb}"


def notebook_cells(nb: str) -> str:
    return f"{PREFIX}:nb:{nb}:cells"


def notebook_pending(nb: str) -> str:
    return f"{PREFIX}:nb:{nb}:pending"


def feed_seq(nb: str) -> str:
    return f"{PREFIX}:nb:{nb}:seq"


def idempotency(nb: str, key_digest: str) -> str:
    """The cell a client's Idempotency-Key (by its SHA-256 hex digest) submitted to notebook `nb`."""
    return f"{PREFIX}:nb:{nb}:idem:{key_digest}"


def cell(cell_id: str) -> str:
    return f"{PREFIX}:cell:{cell_id}"


def checkpoint(nb: str) -> str:
    return f"{PREFIX}:checkpoint:{nb}"


def feed_channel(nb: str) -> str:
    return f"{PREFIX}:feed:{nb}"


def feed_stream(nb: str) -> str:
    return f"{PREFIX}:stream:{nb}"


def worker(w: str) -> str:
    return f"{PREFIX}:worker:{w}"


def worker_rpc(w: str) -> str:
    return f"{PREFIX}:worker:{w}:rpc"


def worker_files(w: str) -> str:
    return f"{PREFIX}:worker:{w}:files"


def transfer(transfer_id: str, direction: str) -> str:
    """One file transfer's list of frames: direction "up" (API -> worker) or "down" (worker -> API)."""
    return f"{PREFIX}:transfer:{transfer_id}:{direction}"


def reply(request_id: str) -> str:
    return f"{PREFIX}:reply:{request_id}"


def idle_workers(engine: str, host: str) -> str:
    return f"{PREFIX}:idle:{engine}:{host}"


def host(name: str) -> str:
    return f"{PREFIX}:host:{name}"


def host_recovery_lock(name: str) -> str:
    return f"{PREFIX}:host:{name}:recovery"


def host_commands(name: str) -> str:
    return f"{PREFIX}:host:{name}:commands"


def gateway_connections(gateway_id: str) -> str:
    return f"{PREFIX}:gateway:{gateway_id}:connections"


def worker_queue(host_name: str, slot: int) -> str:
    return f"{PREFIX}.{host_name}.{slot}"


def host_beats(name: str) -> str:
    """The host's heartbeat counter (no expiry: its death is judged by observers' clocks, not Redis's)."""
    return f"{PREFIX}:host:{name}:beats"


def host_workers(name: str) -> str:
    """The ids of the workers a host's supervisor has forked and not yet reaped."""
    return f"{PREFIX}:host:{name}:workers"
