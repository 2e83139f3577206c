"""The Lua scripts: each runs atomically in Redis, so a check and the write it guards
cannot be split by another client. Every write a monitor makes is fenced this way by its
lease: a monitor that lost the lease (paused, partitioned, slow) writes nothing."""

from __future__ import annotations

#: KEYS: lease. ARGV: token, milliseconds. 1 when the lease is this token's now.
ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

#: KEYS: lease. ARGV: token, milliseconds. 0 when the lease is not this token's any more
#: (never taken back here: another monitor may have held it and checkpointed meanwhile).
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

#: KEYS: lease. ARGV: token.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

#: The checkpoint: state and position in one step, only while the lease is this token's.
#: KEYS: lease, checkpoint. ARGV: token, position, state, count, saved_by, saved_at.
COMMIT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[2], 'position', ARGV[2], 'state', ARGV[3], 'count', ARGV[4],
           'saved_by', ARGV[5], 'saved_at', ARGV[6])
return 1
"""

#: A value only the lease holder may set. KEYS: lease, key. ARGV: token, value,
#: milliseconds to live (0: for ever).
SET_IF_HOLDER = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
else
  redis.call('SET', KEYS[2], ARGV[2])
end
return 1
"""

#: KEYS: stream, applied. Returns {entries ever added, entries in the stream now,
#: the applied count or -1 when none was written}.
COUNTS = """
local added, length = 0, 0
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'entries-added' then
      added = info[i + 1]
    elseif info[i] == 'length' then
      length = info[i + 1]
    end
  end
end
local applied = redis.call('GET', KEYS[2])
if applied then
  return {added, length, tonumber(applied)}
end
return {added, length, -1}
"""
