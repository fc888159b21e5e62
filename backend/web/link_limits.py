"""What one crowd link may ask of the server: how many requests (moving windows, per second and per minute) and how
much CPU (a budget), both checked in one step before a request does any work, in the store every worker shares.

Request caps bound one request (a stroke may still cost ~1.5 s of CPU) and request rates bound how many a link sends
(20 writes a second), but together they would let one link ask for 30 CPU-seconds a second and hold a worker. So every
request on a task link is also charged the CPU its thread used, measured around the whole request (token check,
queries, the tool, encoding), to a token bucket that holds at most ``burst_s`` CPU-seconds and refills at ``share``
CPU-seconds per second. A link whose bucket is empty, or that is over a request rate, gets a 429 whose `Retry-After`
says when it may go on, before any work. A bucket may go below zero by the one request that emptied it (its cost is
known only afterwards): that debt is simply waited out. A person (a stroke every second or two, a few ms of CPU each)
never comes near either limit.

A link here is a task: every link issued for one task (one per crowd worker, say) draws on the same counts. Writes
(edits, previews, undo/redo, open, submit) and reads (the page, task JSON, image, labels) are counted apart; the CPU
budget covers both. The store is the rate limits' (`CELLLOOP_RATELIMIT_STORAGE_URL`): this process for `memory://`,
Redis for `redis://`, where the check is one short script (timed by the Redis server's clock, so hosts need not
agree on the time) and the charge another: two round trips per request.
"""
from __future__ import annotations

import math
import os
import threading
import time
from collections import deque

from flask import Flask, abort, current_app, g, request

from backend.web.common import error

# the memory store forgets idle links every this many admitted requests
_SWEEP_EVERY = 4096

WRITE_ENDPOINTS = frozenset({"crowd.edit", "crowd.preview", "crowd.undo", "crowd.redo", "crowd.submit",
                             "crowd.open_task"})
# a big task opens in hundreds of chunk reads (backend/tasks/chunked.py): they have a rate of their own
CHUNK_ENDPOINTS = frozenset({"crowd.image_chunk", "crowd.labels_chunk"})

# the clock and a charge (the bucket refilled up to now, less the cost); ARGV[1], ARGV[2]: the bucket's size and refill
_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cap, rate = tonumber(ARGV[1]), tonumber(ARGV[2])
local function charge(key, cost)
  local state = redis.call('HMGET', key, 'b', 't')
  local balance = tonumber(state[1])
  if balance == nil then balance = cap else
    balance = math.min(cap, balance + math.max(0, now - tonumber(state[2])) * rate)
  end
  balance = balance - cost
  redis.call('HSET', key, 'b', tostring(balance), 't', tostring(now))
  redis.call('PEXPIRE', key, math.ceil((cap - balance) / rate * 1000) + 1000)
end
"""

# KEYS: this link's CPU bucket, its request windows, then the buckets of charges waiting to be made
# ARGV: cap, rate, number of windows, (amount, period) per window, then the cost of each waiting charge
_ADMIT = _PRELUDE + """
local n = tonumber(ARGV[3])
for j = 2 + n, #KEYS do charge(KEYS[j], tonumber(ARGV[2 + n + j])) end
local wait, why = 0, 'cpu'
local state = redis.call('HMGET', KEYS[1], 'b', 't')
local balance = tonumber(state[1])
if balance ~= nil then
  balance = math.min(cap, balance + math.max(0, now - tonumber(state[2])) * rate)
  if balance <= 0 then wait = -balance / rate end
end
for i = 1, n do
  local amount, period = tonumber(ARGV[2 + 2 * i]), tonumber(ARGV[3 + 2 * i])
  local oldest = redis.call('LINDEX', KEYS[1 + i], amount - 1)
  if oldest and now - tonumber(oldest) < period and tonumber(oldest) + period - now > wait then
    wait, why = tonumber(oldest) + period - now, 'rate'
  end
end
if wait > 0 then return why .. ' ' .. tostring(wait) end
for i = 1, n do
  local amount, period = tonumber(ARGV[2 + 2 * i]), tonumber(ARGV[3 + 2 * i])
  redis.call('LPUSH', KEYS[1 + i], tostring(now))
  redis.call('LTRIM', KEYS[1 + i], 0, amount - 1)
  redis.call('PEXPIRE', KEYS[1 + i], math.ceil(period * 1000))
end
return 'ok 0'
"""

# the waiting charges alone (KEYS: buckets; ARGV: cap, rate, one cost per bucket), when no request comes to carry them
_CHARGE = _PRELUDE + """
for j = 1, #KEYS do charge(KEYS[j], tonumber(ARGV[2 + j])) end
return 'ok'
"""

# a charge waits at most this long for a request on this worker to carry it to Redis
CHARGE_DELAY_S = 0.05


def _rates_text(rates) -> str:
    return "; ".join(f"{amount} per {period:g} s" for amount, period in rates)


def parse_rates(text: str) -> list[tuple[int, float]]:
    """'20 per second; 1200 per minute' as [(amount, period in seconds), ...]."""
    from limits import parse_many

    return [(int(item.amount), float(item.get_expiry())) for item in parse_many(text)]


class MemoryStore:
    """Counts in this process (the embedded default: one worker, or tests)."""

    def __init__(self) -> None:
        self._windows: dict[str, deque] = {}
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self._admitted = 0

    def _balance(self, key: str, cap: float, rate: float, now: float) -> float | None:
        state = self._buckets.get(key)
        if state is None:
            return None
        return min(cap, state[0] + max(0.0, now - state[1]) * rate)

    def admit(self, bucket: str, windows: list[str], cap: float, rate: float, rates) -> tuple[float, str]:
        now = time.monotonic()
        with self._lock:
            wait, why = 0.0, "cpu"
            balance = self._balance(bucket, cap, rate, now)
            if balance is not None and balance <= 0:
                wait = -balance / rate
            for key, (amount, period) in zip(windows, rates):
                stamps = self._windows.get(key)
                if stamps is not None and len(stamps) >= amount and stamps[0] + period - now > wait:
                    wait, why = stamps[0] + period - now, "rate"
            if wait > 0:
                return wait, why
            for key, (amount, period) in zip(windows, rates):
                stamps = self._windows.get(key)
                if stamps is None or stamps.maxlen != amount:
                    stamps = self._windows[key] = deque(stamps or (), maxlen=amount)
                stamps.append(now)
            self._admitted += 1
            if self._admitted % _SWEEP_EVERY == 0:
                self._sweep(now, cap, rate, max(period for _, period in rates))
            return 0.0, "ok"

    def _sweep(self, now: float, cap: float, rate: float, longest: float) -> None:
        """Forget links whose windows are empty and whose bucket is full again: they count as new."""
        for key in [k for k, stamps in self._windows.items() if not stamps or now - stamps[-1] >= longest]:
            del self._windows[key]
        for key in [k for k, (b, at) in self._buckets.items() if b + (now - at) * rate >= cap]:
            del self._buckets[key]

    def charge(self, bucket: str, cap: float, rate: float, cost: float) -> float:
        now = time.monotonic()
        with self._lock:
            balance = self._balance(bucket, cap, rate, now)
            balance = (cap if balance is None else balance) - cost
            self._buckets[bucket] = (balance, now)
            return balance


class RedisStore:
    """Counts in Redis, shared by every worker and host. A request's CPU charge rides along with the next admission
    check this worker sends (one round trip per request instead of two), or goes alone after CHARGE_DELAY_S when no
    request comes: another worker may admit one request of a link before that link's last charge has landed."""

    def __init__(self, url: str) -> None:
        import redis

        client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._admit = client.register_script(_ADMIT)
        self._charge = client.register_script(_CHARGE)
        self._pending: dict[str, float] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._flusher_pid = None
        self._params = None

    def _take_pending(self) -> dict[str, float]:
        with self._lock:
            pending, self._pending = self._pending, {}
            return pending

    def _restore(self, pending: dict[str, float]) -> None:
        with self._lock:
            for key, cost in pending.items():
                self._pending[key] = self._pending.get(key, 0.0) + cost

    def admit(self, bucket: str, windows: list[str], cap: float, rate: float, rates) -> tuple[float, str]:
        pending = self._take_pending()
        args = [repr(cap), repr(rate), len(rates)]
        for amount, period in rates:
            args += [amount, repr(period)]
        args += [repr(cost) for cost in pending.values()]
        try:
            why, wait = self._admit(keys=[bucket, *windows, *pending], args=args).split()
        except Exception:
            self._restore(pending)
            raise
        return float(wait), why.decode()

    def charge(self, bucket: str, cap: float, rate: float, cost: float) -> None:
        with self._lock:
            self._pending[bucket] = self._pending.get(bucket, 0.0) + cost
            self._params = (cap, rate)
            if self._flusher_pid != os.getpid():  # first charge in this (forked) worker process
                self._flusher_pid = os.getpid()
                threading.Thread(target=self._flush_forever, name="cellloop-cpu-charges", daemon=True).start()
        self._wake.set()

    def _flush_forever(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            time.sleep(CHARGE_DELAY_S)
            self.flush()

    def flush(self) -> None:
        """Send the charges no request has carried yet."""
        pending = self._take_pending()
        if not pending:
            return
        cap, rate = self._params
        try:
            self._charge(keys=list(pending), args=[repr(cap), repr(rate), *(repr(c) for c in pending.values())])
        except Exception:
            self._restore(pending)  # the store is unreachable: the next request's check says so


def store_from_url(url: str):
    if url.startswith("memory://"):
        return MemoryStore()
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(url)
    from backend.config import ConfigError

    raise ConfigError(f"CELLLOOP_RATELIMIT_STORAGE_URL {url.split('://')[0]}:// cannot hold the crowd links' limits: "
                      f"use memory:// (one process) or redis://host:port/db")


class LinkLimits:
    def __init__(self, store, *, writes: str, reads: str, burst_s: float, share: float, prefix: str,
                 chunk_reads: str | None = None) -> None:
        self.store = store
        self.rates = {"write": parse_rates(writes), "read": parse_rates(reads),
                      "chunk read": parse_rates(chunk_reads or reads)}
        self.burst_s = float(burst_s)
        self.share = float(share)
        self.prefix = prefix

    def _bucket(self, link: str) -> str:
        return f"{self.prefix}:link-cpu:{link}"

    def retry_after(self, link: str, kind: str) -> tuple[float, str] | None:
        """(seconds until ``link`` may send a request of ``kind`` ('write', 'read' or 'chunk read'), and why: 'rate' or
        'cpu'), or
        None when it may now (and then the request is counted)."""
        rates = self.rates[kind]
        windows = [f"{self.prefix}:link-{kind.replace(' ', '-')}:{link}:{amount}/{period:g}" for amount, period in rates]
        wait, why = self.store.admit(self._bucket(link), windows, self.burst_s, self.share, rates)
        return (wait, why) if wait > 0 else None

    def charge(self, link: str, cpu_s: float) -> None:
        self.store.charge(self._bucket(link), self.burst_s, self.share, max(cpu_s, 1e-6))


def init_link_limits(app: Flask, config) -> None:
    if not config.ratelimit_enabled:
        return
    app.extensions["cellloop.link_limits"] = LinkLimits(
        store_from_url(config.ratelimit_storage_url), writes=config.ratelimit_link_writes,
        reads=config.ratelimit_link_reads, chunk_reads=config.ratelimit_link_chunk_reads,
        burst_s=config.link_cpu_burst_s, share=config.link_cpu_share,
        prefix=config.ratelimit_key_prefix)

    @app.before_request
    def _start_clock():
        g.link_cpu_t0 = time.thread_time()

    @app.teardown_request
    def _charge(_exc=None):
        link = g.pop("link_charged", None)
        if link is not None:
            app.extensions["cellloop.link_limits"].charge(link, time.thread_time() - g.link_cpu_t0)


def admit(link: str) -> None:
    """Before a link's request does its work: 429 (with Retry-After) when the link is over a request rate or its CPU
    budget is spent; otherwise the request is counted, and its CPU charged to the link when it ends."""
    limits = current_app.extensions.get("cellloop.link_limits")
    if limits is None:
        return
    kind = ("write" if request.endpoint in WRITE_ENDPOINTS else
            "chunk read" if request.endpoint in CHUNK_ENDPOINTS else "read")
    refused = limits.retry_after(link, kind)
    if refused is not None:
        wait, why = refused
        retry = max(1, math.ceil(wait))
        if why == "cpu":
            reason = (f"this link has used its CPU budget ({limits.share:g} CPU-seconds per second, in bursts of up "
                      f"to {limits.burst_s:g} s)")
        else:
            reason = f"too many {kind}s on this link (at most {_rates_text(limits.rates[kind])})"
        resp = error(429, f"{reason}: retry in {retry} s", retry_after_s=retry, limit=why)
        resp.headers["Retry-After"] = str(retry)
        abort(resp)
    g.link_charged = link
