"""A CPU budget per crowd link: a token bucket of CPU-seconds, so one link cannot take a worker's whole CPU.

Request caps bound one request (a stroke may still cost ~1.5 s) and request rates bound how many a link sends (20 a
second), but together they let one link ask for 30 CPU-seconds a second. So every request on a task link is charged
the CPU its thread actually used, measured around the whole request (token check, queries, the tool, encoding), to a
bucket that holds at most ``burst_s`` CPU-seconds and refills at ``share`` CPU-seconds per second. A link whose bucket
is empty gets a 429 with the `Retry-After` its refill needs, before any work; a normal annotator (a few ms of CPU a
stroke) never comes near it. A bucket may go below zero by the one request that emptied it (its cost is known only
afterwards): that debt is simply waited out.

The buckets live where the rate limits do (`CELLLOOP_RATELIMIT_STORAGE_URL`): in this process for `memory://`, in
Redis for `redis://`, so that every worker and host draws on the same bucket (one short script per check and per
charge, timed by the Redis server's clock, so hosts need not agree on the time).
"""
from __future__ import annotations

import math
import threading
import time

from flask import Flask, abort, current_app, g

from backend.web.common import error

# buckets untouched for this long are full again: the memory store forgets them
_MEMORY_SWEEP_EVERY = 4096

_REDIS_SCRIPT = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local cap, rate, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'b', 't')
local balance, at = tonumber(state[1]), tonumber(state[2])
if balance == nil then balance, at = cap, now end
balance = math.min(cap, balance + math.max(0, now - at) * rate)
if cost > 0 then
  balance = balance - cost
  redis.call('HSET', KEYS[1], 'b', tostring(balance), 't', tostring(now))
  redis.call('PEXPIRE', KEYS[1], math.ceil((cap - balance) / rate * 1000) + 1000)
end
return tostring(balance)
"""


class MemoryBuckets:
    """Buckets in this process (the embedded default: one worker, or tests)."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self._writes = 0

    def balance(self, key: str, cap: float, rate: float, cost: float) -> float:
        now = time.monotonic()
        with self._lock:
            balance, at = self._buckets.get(key, (cap, now))
            balance = min(cap, balance + max(0.0, now - at) * rate)
            if cost > 0:
                balance -= cost
                self._buckets[key] = (balance, now)
                self._writes += 1
                if self._writes % _MEMORY_SWEEP_EVERY == 0:
                    self._sweep(now, cap, rate)
            return balance

    def _sweep(self, now: float, cap: float, rate: float) -> None:
        full = [k for k, (b, at) in self._buckets.items() if b + (now - at) * rate >= cap]
        for k in full:
            del self._buckets[k]


class RedisBuckets:
    """Buckets in Redis, shared by every worker and host."""

    def __init__(self, url: str) -> None:
        import redis

        self._script = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5).register_script(
            _REDIS_SCRIPT)

    def balance(self, key: str, cap: float, rate: float, cost: float) -> float:
        return float(self._script(keys=[key], args=[repr(cap), repr(rate), repr(cost)]))


def buckets_from_url(url: str):
    if url.startswith("memory://"):
        return MemoryBuckets()
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisBuckets(url)
    from backend.config import ConfigError

    raise ConfigError(f"CELLLOOP_RATELIMIT_STORAGE_URL {url.split('://')[0]}:// cannot hold the per-link CPU budget: "
                      f"use memory:// (one process) or redis://host:port/db")


class CPUBudget:
    def __init__(self, buckets, *, burst_s: float, share: float, prefix: str) -> None:
        self.buckets = buckets
        self.burst_s = float(burst_s)
        self.share = float(share)
        self.prefix = prefix

    def _key(self, link: str) -> str:
        return f"{self.prefix}:cpu:{link}"

    def retry_after(self, link: str) -> float | None:
        """Seconds until ``link`` may be served again, or None when its bucket still holds CPU time."""
        balance = self.buckets.balance(self._key(link), self.burst_s, self.share, 0.0)
        return None if balance > 0 else (-balance + 1e-3) / self.share

    def charge(self, link: str, cpu_s: float) -> None:
        self.buckets.balance(self._key(link), self.burst_s, self.share, max(cpu_s, 1e-6))


def init_cpu_budget(app: Flask, config) -> None:
    if not config.ratelimit_enabled:
        return
    app.extensions["cellloop.cpu_budget"] = CPUBudget(
        buckets_from_url(config.ratelimit_storage_url), burst_s=config.link_cpu_burst_s,
        share=config.link_cpu_share, prefix=config.ratelimit_key_prefix)

    @app.before_request
    def _start_clock():
        g.cpu_budget_t0 = time.thread_time()

    @app.teardown_request
    def _charge(_exc=None):
        link = g.pop("cpu_budget_link", None)
        if link is not None:
            app.extensions["cellloop.cpu_budget"].charge(link, time.thread_time() - g.cpu_budget_t0)


def draw(link: str) -> None:
    """Before a link's request does its work: 429 when the link's CPU budget is spent; otherwise this request's CPU
    is charged to it when it ends (whatever its outcome)."""
    budget = current_app.extensions.get("cellloop.cpu_budget")
    if budget is None:
        return
    wait = budget.retry_after(link)
    if wait is not None:
        retry = max(1, math.ceil(wait))
        resp = error(429, f"this link has used its CPU budget ({budget.share:g} CPU-seconds per second, in bursts of "
                          f"up to {budget.burst_s:g} s): retry in {retry} s", retry_after_s=retry)
        resp.headers["Retry-After"] = str(retry)
        abort(resp)
    g.cpu_budget_link = link
