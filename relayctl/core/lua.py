"""Lua scripts of the job store. Each one is a single atomic step on the server.

Every script checks key types before its first write, so a script either writes all of its
keys or none (Redis does not roll back a script that fails half-way).
"""

from __future__ import annotations

# ISO_MS, the Lua `iso_ms(s)` of the timestamp contract, lives beside its Python twin.
from relayctl.core.timestamps import ISO_MS as ISO_MS

TYPE_OK = """
local function type_is(key, wanted)
  local t = redis.call('TYPE', key)
  if type(t) == 'table' then t = t['ok'] end
  return t == 'none' or t == wanted
end
"""

# KEYS: idempotency, old, new, index, queue
# ARGV: use_idem, dual, ttl_ms, score, job_id, idem_ttl_ms, field, value, ...
ENQUEUE = TYPE_OK + """
local job_id = ARGV[5]
if ARGV[1] == '1' then
  if not type_is(KEYS[1], 'string') then
    return redis.error_reply('WRONGTYPE idempotency key is not a string')
  end
  local existing = redis.call('GET', KEYS[1])
  if existing then return {0, existing} end
end
if redis.call('EXISTS', KEYS[2]) == 1
    or (ARGV[2] == '1' and redis.call('EXISTS', KEYS[3]) == 1) then
  return redis.error_reply('ERR job id collision: ' .. job_id)
end
if not type_is(KEYS[5], 'list') then
  return redis.error_reply('WRONGTYPE pending queue is not a list')
end
if ARGV[2] == '1' and not type_is(KEYS[4], 'zset') then
  return redis.error_reply('WRONGTYPE workspace index is not a sorted set')
end
-- a TTL PEXPIRE would refuse must fail here, before the first write
if not string.match(ARGV[3], '^%d+$') or #ARGV[3] > 15 then
  return redis.error_reply('ERR invalid job ttl_ms: ' .. ARGV[3])
end
local ttl = tonumber(ARGV[3])
local fields = {}
for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
if ARGV[1] == '1' then
  redis.call('SET', KEYS[1], job_id, 'PX', ARGV[6])
end
redis.call('HSET', KEYS[2], unpack(fields))
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ARGV[3]) end
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[3], unpack(fields))
  if ttl > 0 then redis.call('PEXPIRE', KEYS[3], ARGV[3]) end
  redis.call('ZADD', KEYS[4], ARGV[4], job_id)
end
redis.call('RPUSH', KEYS[5], job_id)
return {1, job_id}
"""

# KEYS: old, new, index
# ARGV: dual, workspace_id, job_id, field, value, ...
# Returns {1, where} on success ('both', 'old', 'new', 'old+created'), {0, reason} otherwise.
UPDATE = ISO_MS + TYPE_OK + """
local ws = ARGV[2]
local old_exists = redis.call('EXISTS', KEYS[1]) == 1
local new_exists = redis.call('EXISTS', KEYS[2]) == 1
if not old_exists and not new_exists then return {0, 'missing'} end
if not type_is(KEYS[1], 'hash') or not type_is(KEYS[2], 'hash') then
  return {0, 'invalid'}
end
if not type_is(KEYS[3], 'zset') then
  return redis.error_reply('WRONGTYPE workspace index is not a sorted set')
end
if old_exists and redis.call('HGET', KEYS[1], 'workspace_id') ~= ws then
  return {0, 'mismatch-old'}
end
if new_exists and redis.call('HGET', KEYS[2], 'workspace_id') ~= ws then
  return {0, 'mismatch-new'}
end
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
local where = 'new'
if old_exists then
  redis.call('HSET', KEYS[1], unpack(fields))
  where = 'old'
end
if new_exists then
  redis.call('HSET', KEYS[2], unpack(fields))
  if old_exists then where = 'both' end
  if ARGV[1] == '1' then
    local score = iso_ms(redis.call('HGET', KEYS[2], 'enqueued_at'))
    redis.call('ZADD', KEYS[3], 'NX', score, ARGV[3])
  end
elseif ARGV[1] == '1' then
  local record = redis.call('HGETALL', KEYS[1])
  redis.call('HSET', KEYS[2], unpack(record))
  local pttl = redis.call('PTTL', KEYS[1])
  if pttl > 0 then redis.call('PEXPIRE', KEYS[2], pttl) end
  local score = iso_ms(redis.call('HGET', KEYS[1], 'enqueued_at'))
  redis.call('ZADD', KEYS[3], score, ARGV[3])
  where = 'old+created'
end
return {1, where}
"""

# Redis Cluster refuses a script whose keys live in different slots, so on a cluster enqueue
# and update run as ordered steps, each one script on one slot (see JobStore.enqueue).

# KEYS: old
# ARGV: ttl_ms, job_id, field, value, ...
# Returns 1. Cluster enqueue step 1: the legacy record alone.
ENQUEUE_LEGACY = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.error_reply('ERR job id collision: ' .. ARGV[2])
end
if not string.match(ARGV[1], '^%d+$') or #ARGV[1] > 15 then
  return redis.error_reply('ERR invalid job ttl_ms: ' .. ARGV[1])
end
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
if tonumber(ARGV[1]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return 1
"""

# KEYS: new [, index]  (the index only when it shares the new record's slot)
# ARGV: ttl_ms, score, job_id, field, value, ...
# Returns 1. Cluster enqueue step 2: the new record, and its index entry when it can.
ENQUEUE_NEW = TYPE_OK + """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.error_reply('ERR job id collision: ' .. ARGV[3])
end
if KEYS[2] and not type_is(KEYS[2], 'zset') then
  return redis.error_reply('WRONGTYPE workspace index is not a sorted set')
end
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
if tonumber(ARGV[1]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
if KEYS[2] then redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3]) end
return 1
"""

# KEYS: idempotency
# ARGV: job_id
# Returns 1 if the key held job_id and was deleted, else 0 (another request owns it).
RELEASE_IDEMPOTENCY = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: old
# ARGV: workspace_id, field, value, ...
# Returns {1, record (HGETALL after the update), pttl}, or {0, reason} without writing.
# Cluster update step 1: the legacy record, re-checked since the caller's pre-read.
UPDATE_LEGACY = TYPE_OK + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 'missing'} end
if not type_is(KEYS[1], 'hash') then return {0, 'invalid'} end
if redis.call('HGET', KEYS[1], 'workspace_id') ~= ARGV[1] then
  return {0, 'mismatch-old'}
end
local fields = {}
for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
return {1, redis.call('HGETALL', KEYS[1]), redis.call('PTTL', KEYS[1])}
"""

# KEYS: new [, index]  (the index only when it shares the new record's slot)
# ARGV: dual, workspace_id, job_id, score_of_new ('' = read it here), score_of_record,
#       pttl, n_fields, field, value, ... (n_fields pairs), then the legacy record's pairs
# Returns {what, score}: 'updated' (the new record existed), 'created' (made whole from the
# legacy record), 'none', or 'mismatch-new' / 'invalid' without writing.
# Cluster update step 2.
UPDATE_NEW = ISO_MS + TYPE_OK + """
local dual = ARGV[1] == '1'
if KEYS[2] and not type_is(KEYS[2], 'zset') then
  return redis.error_reply('WRONGTYPE workspace index is not a sorted set')
end
local n = tonumber(ARGV[7])
if redis.call('EXISTS', KEYS[1]) == 1 then
  if not type_is(KEYS[1], 'hash') then return {'invalid', 0} end
  if redis.call('HGET', KEYS[1], 'workspace_id') ~= ARGV[2] then
    return {'mismatch-new', 0}
  end
  local fields = {}
  for i = 8, 7 + 2 * n do fields[#fields + 1] = ARGV[i] end
  redis.call('HSET', KEYS[1], unpack(fields))
  local score = tonumber(ARGV[4])
  if not score then score = iso_ms(redis.call('HGET', KEYS[1], 'enqueued_at')) end
  if dual and KEYS[2] then redis.call('ZADD', KEYS[2], 'NX', score, ARGV[3]) end
  return {'updated', score}
end
if not dual or #ARGV <= 7 + 2 * n then return {'none', 0} end
local record = {}
for i = 8 + 2 * n, #ARGV do record[#record + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(record))
if tonumber(ARGV[6]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[6]) end
local score = tonumber(ARGV[5])
if KEYS[2] then redis.call('ZADD', KEYS[2], score, ARGV[3]) end
return {'created', score}
"""

# KEYS: index [, new_1, old_1, new_2, old_2, ...]  (record keys only when they may share the
#       script: standalone; on a cluster the caller has checked the records)
# ARGV: member_1, score_1, member_2, score_2, ...
# Returns the number of index entries removed: those still at the score the caller read and
# whose job has neither record (list_jobs' orphan pruning).
PRUNE_ORPHANS = """
local removed = 0
local paired = #KEYS > 1
for i = 1, #ARGV / 2 do
  local member, score = ARGV[2 * i - 1], tonumber(ARGV[2 * i])
  local gone = true
  if paired then
    gone = redis.call('EXISTS', KEYS[2 * i]) == 0 and redis.call('EXISTS', KEYS[2 * i + 1]) == 0
  end
  if gone then
    local now = redis.call('ZMSCORE', KEYS[1], member)[1]
    if now and tonumber(now) == score then
      removed = removed + redis.call('ZREM', KEYS[1], member)
    end
  end
end
return removed
"""
