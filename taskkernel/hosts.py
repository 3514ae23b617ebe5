"""Hosts: their records, their supervisors' commands, and liveness judged on the observer's clock.

Every host record (keys.host) is written by `HostWatch.beat` from `host_record` and read through
`host_from_redis`; every command to a supervisor (keys.host_commands) is sent with `send_command`
and read with `next_command`.

A host key that expired proves nothing: its TTL runs on Redis's clock, which goes on while Redis
is frozen or down and no host can heartbeat, so the first supervisor back would take the others
for dead. Instead each heartbeat increments the host's counter, and an observer (every other
supervisor) calls a host dead only when that counter has not moved for `host_ttl_s` of its own
monotonic time *and* across enough of its own successful heartbeats (proof that Redis was
reachable to it meanwhile, so the silent host could have beaten too). The declaration itself is
one script that acts only if the counter still has the value the observer judged on.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import redis

from taskkernel import celery_wire, keys
from taskkernel.messages import as_text

# KEYS: hosts set, host hash, beats counter.  ARGV: host name, host hash TTL (ms), then the hash's
# field/value pairs.  Registers the host and returns its new heartbeat count.
_HEARTBEAT_LUA = """
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return redis.call('INCR', KEYS[3])
"""

# KEYS: beats counter, hosts set, host hash, recovery lock.  ARGV: host name, the counter value the
# observer judged on ('' for none), observer name, lock seconds.  Returns 1 when this call declared
# the host dead (it leaves the hosts set and its counter is removed, so no other observer declares
# it again), 0 when it beat meanwhile or another observer has it.
_DECLARE_DEAD_LUA = """
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[2] then return 0 end
if not redis.call('SET', KEYS[4], ARGV[3], 'NX', 'EX', ARGV[4]) then return 0 end
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[1], KEYS[3])
return 1
"""

RECOVERY_LOCK_S = 60  # a recovery that stopped half-way (its supervisor died) may be redone after this


# --- the supervisor's commands (keys.host_commands): one JSON object per entry, by op ------------

RETIRE = "retire"  # {"op", "worker"}: stop that worker (its notebook is gone or restarted)
SCALE = "scale"  # {"op", "engine", "size"}: keep `size` idle workers of `engine` warm
REFILL = "refill"  # {"op"}: an idle worker was taken, top the pool up now
REFILL_COMMAND = json.dumps({"op": REFILL})  # as the assignment script pushes it


def send_command(client: redis.Redis, host: str, op: str, **fields) -> None:
    """Queue a command for `host`'s supervisor (read by `next_command` in its loop)."""
    client.rpush(keys.host_commands(host), json.dumps({"op": op, **fields}))


def next_command(client: redis.Redis, host: str, timeout_s: float) -> dict | None:
    """The supervisor's side: the next command for `host`, waiting up to `timeout_s`, or None."""
    item = client.blpop([keys.host_commands(host)], timeout=timeout_s)
    return json.loads(item[1]) if item is not None else None


# --- host records (keys.host): written by HostWatch.beat, read by the API and the metrics ------------

def host_record(name: str, *, pid: int, pools: dict[str, int], workers: int, max_workers: int,
                engine_errors: dict[str, str]) -> dict:
    """The fields of a host's record as its supervisor heartbeats them."""
    return {"name": name, "pid": pid, "pools": json.dumps(pools), "workers": workers, "max_workers": max_workers,
            "heartbeat": time.time(), "engine_errors": json.dumps(engine_errors)}


def host_from_redis(name: str, raw: dict) -> dict:
    """A host record as the API shows it: pid, worker counts, pools, engine errors, last heartbeat
    (unix time); empty values for a record that expired."""
    data = {as_text(k): as_text(v) for k, v in raw.items()}
    return {
        "name": name,
        "pid": int(data["pid"]) if data.get("pid") else None,
        "workers": int(data.get("workers") or 0),
        "max_workers": int(data.get("max_workers") or 0),
        "pools": json.loads(data.get("pools") or "{}"),
        "engine_errors": json.loads(data.get("engine_errors") or "{}"),
        "heartbeat": float(data["heartbeat"]) if data.get("heartbeat") else None,
    }


def live_hosts(client: redis.Redis) -> list[dict]:
    """The registered hosts whose record has not expired, by name."""
    hosts = []
    for raw in sorted(client.smembers(keys.HOSTS)):
        record = client.hgetall(keys.host(raw.decode()))
        if record:
            hosts.append(host_from_redis(raw.decode(), record))
    return hosts


@dataclass
class _Sighting:
    beats: bytes | None  # the host's counter as last read
    own_beats: int  # the observer's successful heartbeats when it first read that value
    since: float  # the observer's monotonic time then


class HostWatch:
    """One supervisor's view of the other hosts' heartbeat counters."""

    def __init__(self, client: redis.Redis, host_name: str, *, ttl_s: float, interval_s: float):
        self.redis = client
        self.host = host_name
        self.ttl_s = ttl_s
        # own heartbeats that must succeed while another host stays silent: a few of its intervals
        self.beats_needed = max(2, int(ttl_s / interval_s) - 1)
        self.own_beats = 0
        self._seen: dict[str, _Sighting] = {}
        self._heartbeat = client.register_script(_HEARTBEAT_LUA)
        self._declare = client.register_script(_DECLARE_DEAD_LUA)

    def beat(self, record: dict) -> int:
        """Heartbeat this host (register it, refresh its record, count the beat); the new count."""
        pairs = [x for item in record.items() for x in item]
        count = self._heartbeat(keys=[keys.HOSTS, keys.host(self.host), keys.host_beats(self.host)],
                                args=[self.host, int(self.ttl_s * 1000), *pairs])
        self.own_beats += 1  # only once Redis has answered: a beat that failed proves nothing
        return int(count)

    def silent_hosts(self) -> list[tuple[str, bytes | None]]:
        """The other hosts whose counter stood still long enough, each with the value judged on."""
        others = sorted(h.decode() for h in self.redis.smembers(keys.HOSTS) if h.decode() != self.host)
        pipe = self.redis.pipeline(transaction=False)
        for host in others:
            pipe.get(keys.host_beats(host))
        values = pipe.execute()
        now = time.monotonic()  # after the read: the values are at least this fresh
        for gone in set(self._seen) - set(others):
            del self._seen[gone]
        silent = []
        for host, value in zip(others, values):
            seen = self._seen.get(host)
            if seen is None or seen.beats != value:
                self._seen[host] = _Sighting(value, self.own_beats, now)
            elif self.own_beats - seen.own_beats >= self.beats_needed and now - seen.since >= self.ttl_s:
                silent.append((host, value))
        return silent

    def declare_dead(self, host: str, beats: bytes | None) -> bool:
        """Declare `host` dead if its counter is still `beats`; True when this observer must recover it."""
        got = self._declare(keys=[keys.host_beats(host), keys.HOSTS, keys.host(host), keys.host_recovery_lock(host)],
                            args=[host, beats or b"", self.host, RECOVERY_LOCK_S])
        if got:
            self._seen.pop(host, None)
        return bool(got)

    def recovered(self, host: str) -> None:
        """The dead host's notebooks are re-homed and its keys removed: drop the recovery lock."""
        self.redis.delete(keys.host_recovery_lock(host))

    def forget(self, host: str) -> int:
        """Remove what a host that is gone left in Redis: its workers' records and side channels, its
        queues and kombu's bindings of them, its idle sets, commands and counters. Returns the count
        of keys removed. (SCAN, not an index: a host is lost rarely, and its queues' bindings stay
        in kombu's keys, not ours.)"""
        doomed = [keys.host_workers(host), keys.host_commands(host), keys.host_beats(host), keys.host(host)]
        for raw in self.redis.smembers(keys.host_workers(host)):
            doomed += [keys.worker(raw.decode()), keys.worker_rpc(raw.decode())]
        pattern = _glob_escape(host)
        for match in (keys.worker_queue(pattern, "*"), celery_wire.binding_pattern(keys.worker_queue(pattern, "*")),
                      keys.idle_workers("*", pattern)):
            doomed += [k.decode() for k in self.redis.scan_iter(match=match, count=1000)]
        removed = 0
        for start in range(0, len(doomed), 500):
            removed += self.redis.delete(*doomed[start:start + 500])
        return removed

    def leave(self) -> None:
        """This host stops: remove its record and counter (nobody need judge it dead)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(keys.host(self.host), keys.host_beats(self.host))
        pipe.srem(keys.HOSTS, self.host)
        pipe.execute()


def _glob_escape(text: str) -> str:
    """`text` matched literally in a SCAN MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
