"""The backfill's Lua scripts, each one atomic step on the server.

The standalone copy and its bookkeeping are one script, so a crash leaves a batch either
applied and recorded or not at all. On a cluster the copies and the commit are separate
steps (different slots); the commit is fenced by the token in the state hash.
"""

from __future__ import annotations

from relayctl.core.lua import TYPE_OK
from relayctl.core.scripting import Script

# KEYS: state, lease, control, the batch's W workspace indexes, then (old, new) per job
# ARGV: token, cursor, now, scanned, invalid, filtered, start cursor, W, the W workspace
#       ids, then (job_id, workspace number 1..W, index score) per job
# Returns one code per job (m migrated, e exists, g gone/changed since read, x index error),
# then '|' and the control key's value, so a pause or stop acts right after this batch.
# A batch already applied (its reply was lost and the call retried) is not applied again:
# its recorded codes are returned, so no counter is incremented twice.
COPY_BATCH = TYPE_OK + """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return redis.error_reply('LEASE backfill lease lost to another owner')
end
local last = redis.call('HMGET', KEYS[1], 'cursor', 'last_start', 'last_codes')
local control = redis.call('GET', KEYS[3]) or ''
if last[1] == ARGV[2] and last[2] == ARGV[7] then
  return (last[3] or '') .. '|' .. control
end
local w_count = tonumber(ARGV[8])
local index_ok = {}
for w = 1, w_count do index_ok[w] = type_is(KEYS[3 + w], 'zset') end
local n = (#KEYS - 3 - w_count) / 2
local codes = {}
local migrated, exists, gone, errors = 0, 0, 0, 0
for i = 1, n do
  local old, new = KEYS[2 + w_count + 2 * i], KEYS[3 + w_count + 2 * i]
  local base = 8 + w_count + 3 * (i - 1)
  local job_id, w, score = ARGV[base + 1], tonumber(ARGV[base + 2]), ARGV[base + 3]
  local ws = ARGV[8 + w]
  -- pcall: a key that stopped being a hash is a value here, not an aborted script
  local head = redis.pcall('HMGET', old, 'workspace_id', 'job_id')
  if head['err'] or head[1] ~= ws or head[2] ~= job_id then
    gone = gone + 1
    codes[i] = 'g'
  elseif not index_ok[w] then
    errors = errors + 1
    codes[i] = 'x'
  elseif redis.call('COPY', old, new) == 0 then
    -- without REPLACE, COPY never overwrites: a newer dual-written record stays as it is
    exists = exists + 1
    codes[i] = 'e'
  else
    redis.call('ZADD', KEYS[3 + w], score, job_id)
    migrated = migrated + 1
    codes[i] = 'm'
  end
end
local result = table.concat(codes)
redis.call('HSET', KEYS[1], 'cursor', ARGV[2], 'updated', ARGV[3], 'last_start', ARGV[7],
  'last_codes', result)
redis.call('HINCRBY', KEYS[1], 'scanned', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'migrated', migrated)
redis.call('HINCRBY', KEYS[1], 'skipped_exists', exists)
redis.call('HINCRBY', KEYS[1], 'skipped_invalid', tonumber(ARGV[5]) + gone)
redis.call('HINCRBY', KEYS[1], 'skipped_filtered', ARGV[6])
redis.call('HINCRBY', KEYS[1], 'errors', errors)
return result .. '|' .. control
"""

# KEYS: control, then the batch's legacy keys.  Read-only: returns the control value and,
# per key, workspace_id and job_id ('' when missing; '\0' when the key is not a hash).
READ_HEADS = TYPE_OK + """
local out = {redis.call('GET', KEYS[1]) or ''}
for i = 2, #KEYS do
  local head = redis.pcall('HMGET', KEYS[i], 'workspace_id', 'job_id', 'enqueued_at')
  if head['err'] then
    out[#out + 1] = '\0'
    out[#out + 1] = '\0'
    out[#out + 1] = ''
  else
    out[#out + 1] = head[1] or ''
    out[#out + 1] = head[2] or ''
    out[#out + 1] = head[3] or ''
  end
end
return out
"""

# KEYS: lease, state   ARGV: token, ttl_ms, now, rate, fraction, eta
# Returns 1 when the lease was renewed and the heartbeat written, 0 when the lease is lost.
RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], 'heartbeat', ARGV[3], 'rate', ARGV[4], 'fraction', ARGV[5],
  'eta_s', ARGV[6])
return 1
"""

# Cluster steps. The legacy key, the new key, the index and the engine's own keys live in
# different slots there, so a batch is: reads on the shard's primary, copies routed to each
# new key's primary, then one commit on the state hash. The state hash carries the owner's
# token, which fences the commit as the lease key fences COPY_BATCH on a standalone server.

# KEYS: new, index   ARGV: expiry (absolute ms, 0 = none), dump, score, job_id
# Copy-if-absent of one record and its index entry, atomic when both share a slot.
# Returns 'm' copied, 'e' the copy exists, 'x' the index is not a sorted set.
RESTORE_INDEXED = TYPE_OK + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 'e' end
if not type_is(KEYS[2], 'zset') then return 'x' end
redis.call('RESTORE', KEYS[1], ARGV[1], ARGV[2], 'ABSTTL')
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
return 'm'
"""

# KEYS: state   ARGV: token, shard, cursor, start, now, scanned, migrated, exists, invalid,
#                     filtered, errors, done
# Records one shard's batch; a batch already recorded (a retried commit) is not counted twice.
# Returns 1 recorded, 0 already recorded; a LEASE error when the token is not the owner's.
COMMIT_SHARD = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then
  return redis.error_reply('LEASE backfill lease lost to another owner')
end
local cf, sf = 'cursor:' .. ARGV[2], 'start:' .. ARGV[2]
local last = redis.call('HMGET', KEYS[1], cf, sf)
if last[1] == ARGV[3] and last[2] == ARGV[4] then return 0 end
redis.call('HSET', KEYS[1], cf, ARGV[3], sf, ARGV[4], 'updated', ARGV[5],
  'done:' .. ARGV[2], ARGV[12])
redis.call('HINCRBY', KEYS[1], 'scanned', ARGV[6])
redis.call('HINCRBY', KEYS[1], 'migrated', ARGV[7])
redis.call('HINCRBY', KEYS[1], 'skipped_exists', ARGV[8])
redis.call('HINCRBY', KEYS[1], 'skipped_invalid', ARGV[9])
redis.call('HINCRBY', KEYS[1], 'skipped_filtered', ARGV[10])
redis.call('HINCRBY', KEYS[1], 'errors', ARGV[11])
return 1
"""

# KEYS: lease   ARGV: token, ttl_ms  (the cluster half of RENEW; the state hash is separate)
# Returns 1 renewed, 0 lost.
RENEW_LEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: lease   ARGV: token
# Returns 1 when this owner's lease was deleted, 0 when another owner holds it.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

COPY = Script("backfill.copy_batch", COPY_BATCH)
HEADS = Script("backfill.read_heads", READ_HEADS)
RENEW_STATE = Script("backfill.renew", RENEW)
RESTORE = Script("backfill.restore_indexed", RESTORE_INDEXED)
COMMIT = Script("backfill.commit_shard", COMMIT_SHARD)
RENEW_ONLY_LEASE = Script("backfill.renew_lease", RENEW_LEASE)
RELEASE_LEASE = Script("backfill.release", RELEASE)
