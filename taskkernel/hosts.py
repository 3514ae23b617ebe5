"""Host liveness: heartbeats are counted, and a host is judged dead on its observer's own clock.

A host key that expired proves nothing: its TTL runs on Redis's clock, which goes on while Redis
is frozen or down and no host can heartbeat, so the first supervisor back would take the others
for dead. Instead each heartbeat increments the host's counter, and an observer (every other
supervisor) calls a host dead only when that counter has not moved for `host_ttl_s` of its own
monotonic time *and* across enough of its own successful heartbeats (proof that Redis was
reachable to it meanwhile, so the silent host could have beaten too). The declaration itself is
one script that acts only if the counter still has the value the observer judged on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from taskkernel import keys

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
        for match in (keys.worker_queue(pattern, "*"), f"_kombu.binding*{keys.worker_queue(pattern, '*')}",
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
