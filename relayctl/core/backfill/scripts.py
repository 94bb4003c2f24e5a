"""The backfill's Lua scripts, each one atomic step on the server.

The standalone copy and its bookkeeping are one script, so a crash leaves a batch either
applied and recorded or not at all. On a cluster the copies and the commit are separate
steps (different slots); the commit is fenced by the token in the state hash.
"""

from __future__ import annotations

from relayctl.core.lua import RELEASE_IDEMPOTENCY, TYPE_OK
from relayctl.core.scripting import Script

# KEYS: state, lease, control, the batch's W workspace indexes, then (old, new) per job
# ARGV: token, cursor, now, scanned, invalid, filtered, start cursor, W, the W workspace
#       ids, then (job_id, workspace number 1..W, index score) per job
# Returns one code per job, then '|' and the control key's value, so a pause or stop acts
# right after this batch. Codes: m migrated; g gone since read; x index or copy not usable;
# for a copy that already exists (dual-write made it): e as it was, i its missing index
# entry added, h a partial copy completed from the legacy record, b both.
# A batch already applied (its reply was lost and the call retried) is not applied again:
# its recorded codes are returned, so no counter is incremented twice.
# Cost per job: one COPY (it refuses an existing copy itself), and only for an existing
# copy HLEN x2 + ZADD NX; the index entries of new copies go in one ZADD per workspace.
COPY_BATCH = TYPE_OK + """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return redis.error_reply('LEASE backfill lease lost to '
    .. (redis.call('GET', KEYS[2]) or 'nobody (it expired)'))
end
local last = redis.call('HMGET', KEYS[1], 'cursor', 'last_start', 'last_codes')
local control = redis.call('GET', KEYS[3]) or ''
if last[1] == ARGV[2] and last[2] == ARGV[7] then
  return (last[3] or '') .. '|' .. control
end
local w_count = tonumber(ARGV[8])
local index_ok, pending = {}, {}
for w = 1, w_count do
  index_ok[w] = type_is(KEYS[3 + w], 'zset')
  pending[w] = {}
end
local n = (#KEYS - 3 - w_count) / 2
local codes = {}
local migrated, exists, gone, errors, indexed, healed = 0, 0, 0, 0, 0, 0
for i = 1, n do
  local old, new = KEYS[2 + w_count + 2 * i], KEYS[3 + w_count + 2 * i]
  local base = 8 + w_count + 3 * (i - 1)
  local job_id, w, score = ARGV[base + 1], tonumber(ARGV[base + 2]), ARGV[base + 3]
  if not index_ok[w] then
    errors = errors + 1
    codes[i] = 'x'
  elseif redis.call('COPY', old, new) == 1 then
    local z = pending[w]
    z[#z + 1] = score
    z[#z + 1] = job_id
    migrated = migrated + 1
    codes[i] = 'm'
  else
    -- pcall: a key that stopped being a hash is a value here, not an aborted script
    local olen = redis.pcall('HLEN', old)
    local nlen = redis.pcall('HLEN', new)
    if type(olen) ~= 'number' or olen == 0 then
      gone = gone + 1
      codes[i] = 'g'
    elseif type(nlen) ~= 'number' then
      errors = errors + 1
      codes[i] = 'x'
    else
      exists = exists + 1
      local added = redis.call('ZADD', KEYS[3 + w], 'NX', score, job_id) == 1
      local partial = nlen < olen
      if partial then
        local rec = redis.call('HGETALL', old)
        for f = 1, #rec, 2 do redis.call('HSETNX', new, rec[f], rec[f + 1]) end
        if redis.call('PTTL', new) == -1 then
          local ttl = redis.call('PTTL', old)
          if ttl > 0 then redis.call('PEXPIRE', new, ttl) end
        end
      end
      if added then indexed = indexed + 1 end
      if partial then healed = healed + 1 end
      codes[i] = (added and partial and 'b') or (added and 'i') or (partial and 'h') or 'e'
    end
  end
end
for w = 1, w_count do
  local z = pending[w]
  for j = 1, #z, 2000 do
    redis.call('ZADD', KEYS[3 + w], unpack(z, j, math.min(j + 1999, #z)))
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
if indexed > 0 then redis.call('HINCRBY', KEYS[1], 'indexed', indexed) end
if healed > 0 then redis.call('HINCRBY', KEYS[1], 'healed', healed) end
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
# Returns 'm' copied, 'e' the copy exists, 'i' it exists and its missing index entry was
# added, 'x' the index is not a sorted set.
RESTORE_INDEXED = TYPE_OK + """
if not type_is(KEYS[2], 'zset') then return 'x' end
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('ZADD', KEYS[2], 'NX', ARGV[3], ARGV[4]) == 1 then return 'i' end
  return 'e'
end
redis.call('RESTORE', KEYS[1], ARGV[1], ARGV[2], 'ABSTTL')
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
return 'm'
"""

# KEYS: state   ARGV: token, shard, cursor, start, now, scanned, migrated, exists, invalid,
#                     filtered, errors, done, indexed
# Records one shard's batch; a batch already recorded (a retried commit) is not counted twice.
# Returns 1 recorded, 0 already recorded; a LEASE error when the token is not the owner's.
COMMIT_SHARD = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then
  return redis.error_reply('LEASE backfill lease lost to '
    .. (redis.call('HGET', KEYS[1], 'owner') or 'nobody'))
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
if ARGV[13] ~= '0' then redis.call('HINCRBY', KEYS[1], 'indexed', ARGV[13]) end
return 1
"""

# KEYS: lease   ARGV: token, ttl_ms  (the cluster half of RENEW; the state hash is separate)
# Returns 1 renewed, 0 lost.
RENEW_LEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# The lease is released with the job store's compare-and-delete (KEYS: lease  ARGV: token;
# returns 1 when this owner's lease was deleted, 0 when another owner holds it).
RELEASE = RELEASE_IDEMPOTENCY

# KEYS: state   ARGV: token, then field, value pairs
# Every write of a run's state after its start goes through here or through a script that
# checks the same fence: only the run's owner writes, and a finished run is never rewritten.
# Returns 1; error LEASE naming the owner when the token is not the run's, FINAL when the run
# already finished.
WRITE_STATE = """
local now = redis.call('HMGET', KEYS[1], 'token', 'owner', 'status')
if now[1] ~= ARGV[1] then
  return redis.error_reply('LEASE backfill lease lost to ' .. (now[2] or 'nobody'))
end
if now[3] == 'completed' or now[3] == 'completed_with_errors' then
  return redis.error_reply('FINAL backfill run already ' .. now[3])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
"""

COPY = Script("backfill.copy_batch", COPY_BATCH)
HEADS = Script("backfill.read_heads", READ_HEADS)
RENEW_STATE = Script("backfill.renew", RENEW)
RESTORE = Script("backfill.restore_indexed", RESTORE_INDEXED)
COMMIT = Script("backfill.commit_shard", COMMIT_SHARD)
RENEW_ONLY_LEASE = Script("backfill.renew_lease", RENEW_LEASE)
RELEASE_LEASE = Script("backfill.release", RELEASE)
STATE = Script("backfill.write_state", WRITE_STATE)
