"""The Lua scripts of the shared limits on Redis: each runs atomically on the server.

Keys, under a prefix per server and API key (``P``):

* ``P:run:{app}``, ``P:run``: ZSETs of the slots held (member: a token, score: the lease's
  expiry in ms); an expired member is a slot whose worker stopped renewing it (killed);
* ``P:fly:{app}``: ZSET of the slots granted whose create has no answer yet (scored
  like ``run``): the rest of ``run:{app}`` is known to run;
* ``P:q:{app}``: ZSET of the creates waiting, by turn: each worker's waiters take turns
  with every other worker's (``P:rank:{app}``: HASH worker -> its last turn), so workers
  share the slots evenly; ``P:owner:{app}``: HASH token -> worker; ``P:alive:{worker}``:
  a worker's heartbeat (a dead worker's waiters are dropped);
* ``P:lim:{app}`` (each app's) and ``P:org`` (the whole fleet's, none until a 429 of the
  organisation's cap or a cap the service told): HASH ``window`` (slots the creates may
  hold at once, learnt), ``limited`` (a 429 taught it), ``grow`` (slots added per round
  of starts at the window's edge: doubles every round since the last 429), ``count``
  (starts at the edge in this round), ``ceil`` (what ran at the last 429), ``fast``
  (that 429 moved the cap: grow as in slow start), ``cut`` (when, ms); an app's
  ``proven`` (the most it was known to run at once since its last 429) and ``shared``
  (its last 429 came with the fleet holding the organisation's cap: maybe not its own;
  when a quarter of that cap comes free, the app's window grows as in slow start, unless
  it is at ``own``: what held at a 429 of the app's with room in the organisation);
* ``P:apps``: SET of the apps whose creates waited lately;
* ``P:pause``: set while a rate-limit 429's ``Retry-After`` runs, for every worker;
* ``P:idle``: set while nothing of the fleet runs and another tenant holds the cap: one
  create at a time probes, until one starts.
"""

from __future__ import annotations

from typing import Final

__all__ = ["ACQUIRE", "PAUSE", "REJECTED", "RELEASE", "RENEW", "SEED", "STARTED"]

#: An app's window: the learnt one, else ``initial`` (which a cap the service told
#: raises, unless a 429 taught the window already).
_APP_WINDOW = """
local function app_window(lim, initial)
  local window = tonumber(redis.call('HGET', lim, 'window') or initial)
  if window < initial and not redis.call('HGET', lim, 'limited') then window = initial end
  return window
end
"""

#: ARGV: prefix, app, lease_ms, worker, initial window, the account's prefix (its rate
#: pause: the rate limit is the account's, whatever the project), then pairs (where,
#: token) to enqueue (``head``: before every waiter; else the worker's next turn).
#: Returns ``{pause_ms}`` with ``pause_ms > 0`` while paused, else ``{0, granted
#: tokens...}``.
ACQUIRE: Final = (
    _APP_WINDOW
    + """
local p, app, lease, worker = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local initial = tonumber(ARGV[5])
local run_app, run_org, fly = p .. ':run:' .. app, p .. ':run', p .. ':fly:' .. app
local queue, owner = p .. ':q:' .. app, p .. ':owner:' .. app
redis.call('SET', p .. ':alive:' .. worker, '1', 'PX', lease)
local ranks = p .. ':rank:' .. app
for i = 7, #ARGV, 2 do
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
local apps = p .. ':apps'
redis.call('SADD', apps, app)
redis.call('PEXPIRE', apps, 3600000)
local pause = math.max(redis.call('PTTL', p .. ':pause'), redis.call('PTTL', ARGV[6] .. ':pause'))
if pause > 0 then return {pause} end
redis.call('ZREMRANGEBYSCORE', run_app, '-inf', now)
redis.call('ZREMRANGEBYSCORE', run_org, '-inf', now)
redis.call('ZREMRANGEBYSCORE', fly, '-inf', now)
local lim = p .. ':lim:' .. app
local window = app_window(lim, initial)
local held = redis.call('ZCARD', run_app)
local free = math.floor(window) - held
local org_held = redis.call('ZCARD', run_org)
if free <= 0 and redis.call('HGET', lim, 'shared') then
  -- Cut at the organisation's cap (maybe not the app's own), and a quarter of that cap
  -- is free now (another app left): one more at once, and the window grows as in slow
  -- start until a 429 tells whose cap it meets.
  local org_ceil = tonumber(redis.call('HGET', p .. ':org', 'ceil') or '0')
  if org_held <= org_ceil - math.max(2, org_ceil / 4) then
    window = held + 1
    redis.call('HSET', lim, 'window', window, 'fast', '1')
    redis.call('HDEL', lim, 'shared')
    free = 1
  end
end
local org_window = redis.call('HGET', p .. ':org', 'window')
if org_window then
  local org_free = math.floor(tonumber(org_window)) - org_held
  -- The organisation's free slots go first to the apps holding fewer (max-min fair):
  -- each other app with a live worker's create waiting, below its own window and
  -- holding fewer than this one, keeps one for itself.
  for _, other in ipairs(redis.call('SMEMBERS', apps)) do
    if org_free <= 0 then break end
    if other ~= app then
      local head = redis.call('ZRANGE', p .. ':q:' .. other, 0, 0)[1]
      local who = head and redis.call('HGET', p .. ':owner:' .. other, head)
      if who and redis.call('EXISTS', p .. ':alive:' .. who) == 1 then
        local theirs = redis.call('ZCARD', p .. ':run:' .. other)
        if theirs < held and theirs < app_window(p .. ':lim:' .. other, initial) then
          org_free = org_free - 1
        end
      end
    end
  end
  free = math.min(free, org_free)
end
if redis.call('EXISTS', p .. ':idle') == 1 then free = math.min(free, 1 - org_held) end
if free <= 0 then return {0} end
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
    redis.call('ZADD', fly, now + lease, token)
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
)

#: ARGV: prefix, app, lease_ms, worker, tokens held. Renews their leases.
RENEW: Final = """
local p, app, worker = ARGV[1], ARGV[2], ARGV[4]
local clock = redis.call('TIME')
local expiry = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000) + tonumber(ARGV[3])
redis.call('SET', p .. ':alive:' .. worker, '1', 'PX', ARGV[3])
for i = 5, #ARGV do
  redis.call('ZADD', p .. ':run:' .. app, 'XX', expiry, ARGV[i])
  redis.call('ZADD', p .. ':run', 'XX', expiry, app .. '/' .. ARGV[i])
  redis.call('ZADD', p .. ':fly:' .. app, 'XX', expiry, ARGV[i])
end
return 0
"""

#: ARGV: prefix, app, tokens. Frees their slots, and drops them if they wait.
RELEASE: Final = """
local p, app = ARGV[1], ARGV[2]
for i = 3, #ARGV do
  redis.call('ZREM', p .. ':run:' .. app, ARGV[i])
  redis.call('ZREM', p .. ':run', app .. '/' .. ARGV[i])
  redis.call('ZREM', p .. ':fly:' .. app, ARGV[i])
  redis.call('ZREM', p .. ':q:' .. app, ARGV[i])
  redis.call('HDEL', p .. ':owner:' .. app, ARGV[i])
end
return 0
"""

#: ARGV: prefix, app, initial window, token. A create succeeded (the fleet is not idle any
#: more): each window it filled grows. Before any 429, or after one that moved the cap
#: (``fast``), by one per start (it doubles every round trip); after one that found the
#: cap where the last one did, by ``grow`` per round of starts, ``grow`` doubling every
#: round since that 429: slow at first (the cap is where the 429 said), fast when
#: capacity came free without a word (another app finished, another tenant let go).
STARTED: Final = (
    _APP_WINDOW
    + """
local p, app = ARGV[1], ARGV[2]
local lim, org = p .. ':lim:' .. app, p .. ':org'
redis.call('DEL', p .. ':idle')
local function grow(key, window, held)
  if held < math.floor(window) then return end
  if redis.call('HGET', key, 'fast') or not redis.call('HGET', key, 'limited') then
    redis.call('HSET', key, 'window', window + 1)
    return
  end
  local step = tonumber(redis.call('HGET', key, 'grow') or '1')
  local count = tonumber(redis.call('HGET', key, 'count') or '0') + 1
  window = window + step / window
  if count >= math.floor(window) then step, count = step * 2, 0 end
  redis.call('HSET', key, 'window', window, 'grow', step, 'count', count)
end
local fly = p .. ':fly:' .. app
redis.call('ZREM', fly, ARGV[4])
local held = redis.call('ZCARD', p .. ':run:' .. app)
local known = held - redis.call('ZCARD', fly)
if known > tonumber(redis.call('HGET', lim, 'proven') or '0') then
  redis.call('HSET', lim, 'proven', known)
end
grow(lim, app_window(lim, tonumber(ARGV[3])), held)
local org_window = redis.call('HGET', org, 'window')
if org_window then grow(org, tonumber(org_window), redis.call('ZCARD', p .. ':run')) end
return 0
"""
)

#: ARGV: prefix, app, lease_ms, worker, token, pause_ms, most_ms. A concurrency 429: every
#: worker's slots are in ``run``, so what runs is a cap. The app's, unless the app was
#: known to run more than it holds now since its last 429 (or holds nothing), and holds
#: less than its own last 429 found (or was known to run half as many again): then the
#: organisation's (other apps of the fleet hold the rest), and the app's window stays. The
#: window cut grows slowly if the cap is where the last 429 put it (give or take one), else
#: as in slow start (``fast``: capacity was lost, or is coming back). A create sent before
#: the window's last cut is the same crowding: the window follows what is held, no more.
#: With nothing of the fleet's running (another tenant holds the cap), nothing is learnt:
#: every worker pauses ``pause_ms`` (doubling with each such 429 in a row, up to
#: ``most_ms``), then one create at a time probes until one starts.
REJECTED: Final = """
local p, app, lease, token = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[5]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREM', p .. ':run:' .. app, token)
redis.call('ZREM', p .. ':run', app .. '/' .. token)
local fly = p .. ':fly:' .. app
local sent = tonumber(redis.call('ZSCORE', fly, token) or lease) - lease  -- 0: unknown
redis.call('ZREM', fly, token)
local held = redis.call('ZCARD', p .. ':run:' .. app)
local org_held = redis.call('ZCARD', p .. ':run')
if org_held == 0 then
  local idle = p .. ':idle'
  local strikes = tonumber(redis.call('GET', idle) or '0')
  local first = tonumber(ARGV[6])
  local pause = math.min(first * 2 ^ strikes, math.max(first, tonumber(ARGV[7])))
  if pause > 0 and redis.call('PTTL', p .. ':pause') < pause then
    redis.call('SET', p .. ':pause', '1', 'PX', math.floor(pause))
  end
  redis.call('SET', idle, strikes + 1, 'PX', 60000)
  return 0
end
local lim = p .. ':lim:' .. app
local key, at = lim, held
-- Holding the cap an app's own 429 cut it to (or more) is the app's cap again though it
-- was known to run a few more: a create can get in while an ended invocation's slot is
-- not released yet (another worker's). Known to run half as many again: the cap it was
-- cut to is old news (cut while other apps crowded the organisation).
local ran = tonumber(redis.call('HGET', lim, 'proven') or '0')
local own = tonumber(redis.call('HGET', lim, 'ceil') or math.huge)
if held == 0 or (ran > held and (held < own or ran > own + math.max(1, own / 2))) then
  key, at = p .. ':org', org_held
end
if sent > 0 and sent < tonumber(redis.call('HGET', key, 'cut') or '0') then
  -- Sent before the last cut: the same crowding, no news. The window follows what is
  -- held (no create goes until one ends), and is not cut again.
  if at < tonumber(redis.call('HGET', key, 'window')) then
    redis.call('HSET', key, 'window', math.max(1, at))
  end
  return at
end
local ceil = own  -- the app's, read above
if key ~= lim then ceil = tonumber(redis.call('HGET', key, 'ceil') or math.huge) end
local same = math.abs(at - ceil) <= 1 and at > 1
-- The same cap give or take one keeps the lower: while invocations end unseen (a
-- turnover) what is held counts them, and a cut one too high made every later 429 of
-- the app at its true cap read as the organisation's.
redis.call('HSET', key, 'window', math.max(1, at), 'limited', '1', 'grow', 0.25, 'count', 0,
  'ceil', same and math.min(at, ceil) or at, 'cut', now)
if same then
  redis.call('HDEL', key, 'fast')
else
  redis.call('HSET', key, 'fast', '1')
end
if key == lim then  -- known to run since: no more than the cap it was cut to
  redis.call('HSET', lim, 'proven', math.min(ran, held))
  -- The fleet held the organisation's cap (or none is known): the 429 may have been
  -- the organisation's (on Redis, with 3 apps capped 5/10/20, every 429 of the app
  -- capped at 20 came at the organisation's cap, held 7 by it, and cut it to 7: when
  -- the app capped at 10 left, its window regrew a step a round, 8 of 20 unused for
  -- half a second).
  -- One with room in the organisation is the app's own cap (``own``): a later 429 at it
  -- (give or take one) is the app's again, whatever the fleet holds (an app capped at 3
  -- beside one coming and going was refused once more each time the other paused).
  -- Room means two free: this runs a moment after the refusal, and a slot another
  -- worker released in between must not make the organisation's cap look like room.
  local org_ceil = tonumber(redis.call('HGET', p .. ':org', 'ceil') or '-1')
  local own_cap = tonumber(redis.call('HGET', lim, 'own') or '-1')
  if org_held <= org_ceil - 2 then
    redis.call('HSET', lim, 'own', at)
    redis.call('HDEL', lim, 'shared')
  elseif own_cap >= 0 and math.abs(at - own_cap) <= 1 then
    redis.call('HDEL', lim, 'shared')
  else
    redis.call('HSET', lim, 'shared', '1')
  end
end
return at
"""

#: ARGV: prefix, cap. Seeds the fleet's window from a cap the service told, as if a 429
#: had found it there, unless one was learnt already (each app's window starts there
#: too: `ACQUIRE`'s initial window).
SEED: Final = """
local org = ARGV[1] .. ':org'
if not redis.call('HGET', org, 'limited') then
  redis.call('HSET', org, 'window', ARGV[2], 'limited', '1', 'grow', 0.25, 'count', 0,
    'ceil', ARGV[2])
end
return 0
"""

#: ARGV: the account's prefix, pause_ms. A rate-limit 429's ``Retry-After``: every
#: worker's creates wait that long, in every project (a longer pause already set stays).
PAUSE: Final = """
local key = ARGV[1] .. ':pause'
if redis.call('PTTL', key) < tonumber(ARGV[2]) then
  redis.call('SET', key, '1', 'PX', ARGV[2])
end
return 0
"""
