"""The Lua scripts of the shared limits on Redis: each runs atomically on the server.

Keys, under a prefix per server and API key (``P``):

* ``P:run:{app}``, ``P:run``: ZSETs of the slots held (member: a token, score: the lease's
  expiry in ms); an expired member is a slot whose worker stopped renewing it (killed);
* ``P:q:{app}``: ZSET of the creates waiting, by turn: each worker's waiters take turns
  with every other worker's (``P:rank:{app}``: HASH worker -> its last turn), so workers
  share the slots evenly; ``P:owner:{app}``: HASH token -> worker; ``P:alive:{worker}``:
  a worker's heartbeat (a dead worker's waiters are dropped);
* ``P:lim:{app}``: HASH ``window`` (slots the app's creates may hold at once, learnt),
  ``limited`` (a 429 taught it);
* ``P:pause``: set while a rate-limit 429's ``Retry-After`` runs, for every worker.
"""

from __future__ import annotations

from typing import Final

__all__ = ["ACQUIRE", "PAUSE", "REJECTED", "RELEASE", "RENEW", "SEED", "STARTED"]

#: ARGV: prefix, app, lease_ms, worker, initial window, then pairs (where, token) to
#: enqueue (``head``: before every waiter; else the worker's next turn). Returns
#: ``{pause_ms}`` with ``pause_ms > 0`` while paused, else ``{0, granted tokens...}``.
ACQUIRE: Final = """
local p, app, lease, worker = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local initial = tonumber(ARGV[5])
local run_app, run_org = p .. ':run:' .. app, p .. ':run'
local queue, owner = p .. ':q:' .. app, p .. ':owner:' .. app
redis.call('SET', p .. ':alive:' .. worker, '1', 'PX', lease)
local ranks = p .. ':rank:' .. app
for i = 6, #ARGV, 2 do
  local first = redis.call('ZRANGE', queue, 0, 0, 'WITHSCORES')
  local head = tonumber(first[2] or '0')
  local ticket
  if ARGV[i] == 'head' then
    ticket = head - 1
  else
    -- Each worker's waiters take turns with every other worker's (round robin): the
    -- worker's next rank, never before the head (a newcomer joins the current round).
    ticket = math.max(tonumber(redis.call('HGET', ranks, worker) or '0') + 1, head)
    redis.call('HSET', ranks, worker, ticket)
  end
  redis.call('ZADD', queue, ticket, ARGV[i + 1])
  redis.call('HSET', owner, ARGV[i + 1], worker)
end
redis.call('PEXPIRE', ranks, 3600000)
local pause = redis.call('PTTL', p .. ':pause')
if pause > 0 then return {pause} end
redis.call('ZREMRANGEBYSCORE', run_app, '-inf', now)
redis.call('ZREMRANGEBYSCORE', run_org, '-inf', now)
local window = tonumber(redis.call('HGET', p .. ':lim:' .. app, 'window') or initial)
local free = math.floor(window) - redis.call('ZCARD', run_app)
local granted = {0}
local alive = {}
-- First come, first served: another live worker's earlier waiter reserves a free slot
-- (it takes it at its next poll); a dead worker's waiter is dropped.
local entries = redis.call('ZRANGE', queue, 0, free * 4 + 16)
for _, token in ipairs(entries) do
  if free <= 0 then break end
  local who = redis.call('HGET', owner, token)
  if who == worker then
    redis.call('ZREM', queue, token)
    redis.call('HDEL', owner, token)
    redis.call('ZADD', run_app, now + lease, token)
    redis.call('ZADD', run_org, now + lease, app .. '/' .. token)
    table.insert(granted, token)
    free = free - 1
  elseif who and (alive[who] or redis.call('EXISTS', p .. ':alive:' .. who) == 1) then
    alive[who] = true
    free = free - 1
  else
    redis.call('ZREM', queue, token)
    if who then redis.call('HDEL', owner, token) end
  end
end
return granted
"""

#: ARGV: prefix, app, lease_ms, worker, tokens held. Renews their leases.
RENEW: Final = """
local p, app, worker = ARGV[1], ARGV[2], ARGV[4]
local clock = redis.call('TIME')
local expiry = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000) + tonumber(ARGV[3])
redis.call('SET', p .. ':alive:' .. worker, '1', 'PX', ARGV[3])
for i = 5, #ARGV do
  redis.call('ZADD', p .. ':run:' .. app, 'XX', expiry, ARGV[i])
  redis.call('ZADD', p .. ':run', 'XX', expiry, app .. '/' .. ARGV[i])
end
return 0
"""

#: ARGV: prefix, app, tokens. Frees their slots, and drops them if they wait.
RELEASE: Final = """
local p, app = ARGV[1], ARGV[2]
for i = 3, #ARGV do
  redis.call('ZREM', p .. ':run:' .. app, ARGV[i])
  redis.call('ZREM', p .. ':run', app .. '/' .. ARGV[i])
  redis.call('ZREM', p .. ':q:' .. app, ARGV[i])
  redis.call('HDEL', p .. ':owner:' .. app, ARGV[i])
end
return 0
"""

#: ARGV: prefix, app, initial window. A create succeeded: the window grows (doubling per
#: round trip before any 429, by one per full window after) when it was full.
STARTED: Final = """
local p, app = ARGV[1], ARGV[2]
local lim = p .. ':lim:' .. app
local window = tonumber(redis.call('HGET', lim, 'window') or ARGV[3])
local held = redis.call('ZCARD', p .. ':run:' .. app)
if held >= math.floor(window) then
  if redis.call('HGET', lim, 'limited') then
    window = window + 1 / window
  else
    window = window + 1
  end
  redis.call('HSET', lim, 'window', window)
end
return tostring(window)
"""

#: ARGV: prefix, app, token, pause_ms. A concurrency 429: every worker's slots are in
#: ``run``, so what runs is the cap: the window becomes that (at least 1). With nothing of
#: the fleet's running (another tenant holds the cap), every worker pauses ``pause_ms``.
REJECTED: Final = """
local p, app, token = ARGV[1], ARGV[2], ARGV[3]
redis.call('ZREM', p .. ':run:' .. app, token)
redis.call('ZREM', p .. ':run', app .. '/' .. token)
local held = redis.call('ZCARD', p .. ':run:' .. app)
local lim = p .. ':lim:' .. app
local window = math.max(1, held)
redis.call('HSET', lim, 'window', window, 'limited', '1')
local pause = tonumber(ARGV[4])
if held == 0 and pause > 0 then
  redis.call('SET', p .. ':pause', '1', 'PX', pause)
end
return window
"""

#: ARGV: prefix, app, window. Seeds the window from a cap the service told, unless one is
#: learnt already.
SEED: Final = """
local lim = ARGV[1] .. ':lim:' .. ARGV[2]
if not redis.call('HGET', lim, 'limited') then redis.call('HSET', lim, 'window', ARGV[3]) end
return 0
"""

#: ARGV: prefix, pause_ms. A rate-limit 429's ``Retry-After``: every worker's creates
#: wait that long (a longer pause already set stays).
PAUSE: Final = """
local key = ARGV[1] .. ':pause'
if redis.call('PTTL', key) < tonumber(ARGV[2]) then
  redis.call('SET', key, '1', 'PX', ARGV[2])
end
return 0
"""
