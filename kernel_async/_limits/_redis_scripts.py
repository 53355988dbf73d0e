"""The Lua scripts of the shared limits on Redis: each runs atomically on the server.

Keys, under a prefix per server and API key (``P``):

* ``P:run:{app}``, ``P:run``: ZSETs of the slots held (member: a token, score: the lease's
  expiry in ms); an expired member is a slot whose worker stopped renewing it (killed);
* ``P:q:{app}``: ZSET of the creates waiting, by ticket (first come, first served across
  every worker); ``P:owner:{app}``: HASH token -> worker; ``P:tick:{app}``: the ticket
  counter; ``P:alive:{worker}``: a worker's heartbeat (a dead worker's waiters are dropped);
* ``P:lim:{app}``: HASH ``window`` (slots the app's creates may hold at once, learnt),
  ``limited`` (a 429 taught it);
* ``P:pause``: set while a rate-limit 429's ``Retry-After`` runs, for every worker.
"""

from __future__ import annotations

from typing import Final

__all__ = ["ACQUIRE", "PAUSE", "REJECTED", "RELEASE", "RENEW", "SEED", "STARTED"]

#: ARGV: prefix, app, lease_ms, worker, initial window, then pairs (ticket, token)
#: to enqueue (ticket ``0``: draw one). Returns ``{pause_ms}`` with ``pause_ms > 0`` while
#: paused, else ``{0, granted tokens of this worker...}``.
ACQUIRE: Final = """
local p, app, lease, worker = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local initial = tonumber(ARGV[5])
local run_app, run_org = p .. ':run:' .. app, p .. ':run'
local queue, owner = p .. ':q:' .. app, p .. ':owner:' .. app
redis.call('SET', p .. ':alive:' .. worker, '1', 'PX', lease)
for i = 6, #ARGV, 2 do
  local ticket = tonumber(ARGV[i])
  if ticket == 0 then ticket = redis.call('INCR', p .. ':tick:' .. app) end
  redis.call('ZADD', queue, ticket, ARGV[i + 1])
  redis.call('HSET', owner, ARGV[i + 1], worker)
end
local pause = redis.call('PTTL', p .. ':pause')
if pause > 0 then return {pause} end
redis.call('ZREMRANGEBYSCORE', run_app, '-inf', now)
redis.call('ZREMRANGEBYSCORE', run_org, '-inf', now)
local window = tonumber(redis.call('HGET', p .. ':lim:' .. app, 'window') or initial)
local free = math.floor(window) - redis.call('ZCARD', run_app)
local granted = {0}
local checked = {}
while free > 0 do
  local head = redis.call('ZRANGE', queue, 0, 0, 'WITHSCORES')
  if #head == 0 then break end
  local token = head[1]
  local who = redis.call('HGET', owner, token)
  if who == worker then
    redis.call('ZREM', queue, token)
    redis.call('HDEL', owner, token)
    redis.call('ZADD', run_app, now + lease, token)
    redis.call('ZADD', run_org, now + lease, app .. '/' .. token)
    free = free - 1
    table.insert(granted, token)
  elseif who and (checked[who] or redis.call('EXISTS', p .. ':alive:' .. who) == 1) then
    checked[who] = true
    break  -- another live worker's turn: first come, first served
  else
    redis.call('ZREM', queue, token)  -- its worker died: drop its waiter
    if who then redis.call('HDEL', owner, token) end
  end
end
return granted
"""

#: ARGV: prefix, app, lease_ms, worker, tokens held. Renews their leases.
RENEW: Final = """
local p, app, worker = ARGV[1], ARGV[2], ARGV[4]
local clock = redis.call('TIME')
local until = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000) + tonumber(ARGV[3])
redis.call('SET', p .. ':alive:' .. worker, '1', 'PX', ARGV[3])
for i = 5, #ARGV do
  redis.call('ZADD', p .. ':run:' .. app, 'XX', until, ARGV[i])
  redis.call('ZADD', p .. ':run', 'XX', until, app .. '/' .. ARGV[i])
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
