"""The Lua scripts `RedisState` runs: each one is a single atomic step on the Redis server.

Numbers cross the Lua boundary as strings: Redis turns a Lua number into an integer reply,
which would cut off fractions. Times come from the server's clock (`TIME`), so every instance
measures refills on the same clock.

Must not import anything from estuary.
"""

from __future__ import annotations

from typing import Final

__all__ = ["ADD", "CANCEL", "CLAIM", "FINISH", "GIVE", "LEAVE", "TAKE"]

# The bucket helpers, shared by TAKE and GIVE. A bucket is a hash {l: level, t: time}; a full
# bucket is no key at all, and a key expires when its bucket would be full again. A bucket
# that never refills (per_s == 0) expires after ARGV idle seconds of no use, so slots leaked by
# an instance that died come back eventually.
_BUCKET: Final = """
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function level(key, cap, per, at)
  local v = redis.call('HMGET', key, 'l', 't')
  if not v[1] then return cap end
  return math.min(cap, tonumber(v[1]) + math.max(0, at - tonumber(v[2])) * per)
end

local function store(key, cap, per, lvl, at, idle_ms)
  if lvl >= cap then
    redis.call('DEL', key)
    return
  end
  redis.call('HSET', key, 'l', string.format('%.17g', lvl), 't', string.format('%.17g', at))
  if per > 0 then
    local ms = math.min(math.ceil((cap - lvl) / per * 1000) + 1, 1e15)
    redis.call('PEXPIRE', key, string.format('%.0f', ms))
  else
    redis.call('PEXPIRE', key, idle_ms)
  end
end
"""

# KEYS: the buckets. ARGV[1]: idle expiry (ms); then capacity, per_s, amount for each bucket.
# Returns nil when every amount was taken, else {index of the short bucket (1-based), wait}.
TAKE: Final = (
    _BUCKET
    + """
local at = now()
local idle = tonumber(ARGV[1])
local levels = {}
for i = 1, #KEYS do
  local cap, per = tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i])
  levels[i] = level(KEYS[i], cap, per, at)
end
for i = 1, #KEYS do
  local per, amount = tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
  if levels[i] < amount then
    if per > 0 then
      return {i, string.format('%.17g', (amount - levels[i]) / per)}
    end
    return {i, 'inf'}
  end
end
for i = 1, #KEYS do
  local cap, per = tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i])
  store(KEYS[i], cap, per, levels[i] - tonumber(ARGV[3 * i + 1]), at, idle)
end
return false
"""
)

# KEYS[1]: the bucket. ARGV: idle expiry (ms), capacity, per_s, amount (negative: a debit).
GIVE: Final = (
    _BUCKET
    + """
local at = now()
local cap, per = tonumber(ARGV[2]), tonumber(ARGV[3])
local lvl = math.min(cap, level(KEYS[1], cap, per, at) + tonumber(ARGV[4]))
store(KEYS[1], cap, per, lvl, at, tonumber(ARGV[1]))
return false
"""
)

# KEYS[1]: the counter. ARGV[1]: delta. A counter back at zero is deleted, like a new one.
ADD: Final = """
local value = redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
if tonumber(value) == 0 then redis.call('DEL', KEYS[1]) end
return value
"""

# KEYS[1]: the stream's hash {owner, status}. ARGV: owner, cancel channel, request id.
CANCEL: Final = """
local v = redis.call('HMGET', KEYS[1], 'owner', 'status')
if not v[1] or v[1] ~= ARGV[1] then return 'not_found' end
if v[2] == 'finished' then return 'finished' end
redis.call('HSET', KEYS[1], 'status', 'canceled')
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 'canceled'
"""

# KEYS[1]: the stream's hash. ARGV[1]: how long to remember it finished (ms).
FINISH: Final = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'status', 'finished')
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return false
"""

# KEYS[1]: a log's follower count. A reader leaving never drives it below zero (it may have
# expired meanwhile), and zero is no key.
LEAVE: Final = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n <= 1 then redis.call('DEL', KEYS[1]) else redis.call('DECR', KEYS[1]) end
return false
"""

# KEYS[1]: a log's meta hash. Hand out the request kept with the log, once.
CLAIM: Final = """
local request = redis.call('HGET', KEYS[1], 'request')
if request then redis.call('HDEL', KEYS[1], 'request') end
return request
"""
