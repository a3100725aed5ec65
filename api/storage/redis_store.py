"""The shared store: every replica and worker talks to one Redis; SQLiteStore's semantics, key for key.

Each change that touches several keys is one Lua script, so it is atomic without retries (claiming
buffered samples for a job, finishing a job with the model's version += 1, cancelling, deleting).
Keys are built inside the scripts from a prefix, so this needs one Redis (or a primary with
replicas), not Redis Cluster.

Keys (P is the prefix, "nn" by default):

    P:models          zset  model_id -> created_at (oldest first, ties by id, as SQLite)
    P:owned:{owner}   zset  the same, of the models that owner (an API key name) created
    P:m:{model}       hash  uid, version, info (JSON), blob (.npz), created_at, updated_at, owner (API key name)
    P:buf:{model}     list  batch blobs waiting in the buffer, oldest first
    P:bufn:{model}    int   rows in P:buf:{model}
    P:mjobs:{model}   zset  the model's jobs by sequence number
    P:j:{job}         hash  the JobRecord fields (JSON where structured), checkpoint, checkpoint_info
    P:js:{job}        list  batch blobs the job claimed
    P:buffering / P:queued   zsets of jobs by sequence number;  P:running  set (running + cancelling)
    P:busy:{model}    the job that trains the model now (one at a time, as SQLite's claim)
    P:lease:{job}     the token of the worker that runs the job (SET PX), renewed while it trains

Search jobs (kind "search") add, per job, P:tp:{job} (trial index -> {"params", "seed"}), P:ts:{job}
(index -> status) and P:tr:{job} (index -> worker, times, score, metrics, error), counters t_pending,
t_running, t_ok in P:j:{job}; pending trials wait in the zset P:tq ("job|index", by job then index),
running ones are in the set P:trun, each with its own lease P:lease:{job}|{index}.

Fencing: a store that claimed a job keeps the lease token and sends it with every write for that
job (progress, checkpoint, finish, requeue); the script compares it with P:lease:{job} and refuses
with ``LeaseLost`` once the lease expired and another worker may own the job.

Samples are stored as raw array bytes behind a small fixed header (never pickle, never JSON floats).
"""

import json
import logging
import struct
import threading
import time
import uuid
from functools import wraps
from typing import Any, Callable

import numpy as np
import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from api.errors import (JobNotCancellable, JobNotFound, LeaseLost, ModelBusy, ModelExists, ModelNotFound,
                        PayloadTooLarge, StoreUnavailable, VersionConflict)
from api.storage import redis_registry as registry
from api.storage.base import JobRecord, ModelRecord, Notification, Store, VersionRecord, new_trial, source_of, with_trials

log = logging.getLogger("api.redis")

JOB_FIELDS = ("model_id", "model_uid", "status", "params", "min_samples", "consume_buffer", "n_samples", "epochs_done",
              "progress", "history", "error", "worker_id", "model_version", "created_at", "started_at", "finished_at",
              "kind", "stage", "owner")

_HEADER = struct.Struct("<4sIII8s")  # magic, rows, n_in, n_out, dtype (NumPy str, e.g. b"<f4")
_MAGIC = b"NNS1"


def pack_samples(x: np.ndarray, y: np.ndarray) -> bytes:
    x = np.ascontiguousarray(x)
    y = np.ascontiguousarray(y, dtype=x.dtype)
    return _HEADER.pack(_MAGIC, len(x), x.shape[1], y.shape[1], x.dtype.str.encode()) + x.tobytes() + y.tobytes()


def unpack_samples(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    magic, n, n_in, n_out, dtype = _HEADER.unpack_from(blob)
    if magic != _MAGIC:
        raise ValueError("not a sample batch")
    dtype = np.dtype(dtype.rstrip(b"\0").decode())
    x = np.frombuffer(blob, dtype=dtype, count=n * n_in, offset=_HEADER.size).reshape(n, n_in)
    y = np.frombuffer(blob, dtype=dtype, count=n * n_out, offset=_HEADER.size + x.nbytes).reshape(n, n_out)
    return x, y


# -- Lua ------------------------------------------------------------------------------------------
# Shared by the scripts that end a job: the model takes the blob (or the checkpoint), version += 1,
# when it still is the same model (uid); unused consumed samples go back to the buffer's front.
_FINISH = """
-- the model's current weights become its kept version (uid, version); older than the newest keep + 1 are pruned
local function keep_version(P, mid, source, now)
  local f = redis.call('HMGET', P..':m:'..mid, 'uid', 'version', 'blob', 'info')
  local index, version = P..':vers:'..f[1], tonumber(f[2])
  redis.call('HSET', P..':v:'..f[1]..':'..f[2], 'model_id', mid, 'blob', f[3], 'info', f[4], 'source', source,
    'created_at', now)
  redis.call('ZADD', index, version, f[2])
  local oldest = version - tonumber(redis.call('GET', P..':conf:keep_versions') or '10')
  for _, v in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', '(' .. oldest)) do
    redis.call('DEL', P..':v:'..f[1]..':'..v)
  end
  redis.call('ZREMRANGEBYSCORE', index, '-inf', '(' .. oldest)
end
-- the index of GET /jobs: an ended job leaves P:jobs:active for its status's index (statuses that never change)
local function index_ended(P, jid, status)
  redis.call('ZREM', P..':jobs:active', jid)
  redis.call('ZADD', P..':jobs:s:'..status, redis.call('HGET', P..':j:'..jid, 'seq'), jid)
end
local function finish(P, jid, status, has_blob, blob, info, use_ckpt, err, now)
  local jk = P..':j:'..jid
  local mid = redis.call('HGET', jk, 'model_id')
  local uid = redis.call('HGET', jk, 'model_uid')
  local js = P..':js:'..jid
  if has_blob ~= '1' and use_ckpt == '1' then
    local ck = redis.call('HGET', jk, 'checkpoint')
    if ck then has_blob = '1'; blob = ck; info = redis.call('HGET', jk, 'checkpoint_info') end
  end
  local mk = P..':m:'..mid
  local same = redis.call('HGET', mk, 'uid') == uid
  local version = false
  if has_blob == '1' then
    if same then
      version = redis.call('HINCRBY', mk, 'version', 1)
      redis.call('HSET', mk, 'blob', blob, 'info', info, 'updated_at', now)
      keep_version(P, mid, cjson.encode({source = 'job', job_id = jid, job_status = status}), now)
    end
    redis.call('DEL', js)
  elseif redis.call('HGET', jk, 'consume_buffer') == '1' and same then
    local items = redis.call('LRANGE', js, 0, -1)
    for i = #items, 1, -1 do redis.call('LPUSH', P..':buf:'..mid, items[i]) end
    redis.call('INCRBY', P..':bufn:'..mid, tonumber(redis.call('HGET', jk, 'n_samples') or '0'))
    redis.call('DEL', js)
  else
    redis.call('DEL', js)
  end
  redis.call('HSET', jk, 'status', status, 'finished_at', now)
  index_ended(P, jid, status)
  if err ~= '' then redis.call('HSET', jk, 'error', err) end
  if version then redis.call('HSET', jk, 'model_version', version) else redis.call('HDEL', jk, 'model_version') end
  redis.call('HDEL', jk, 'checkpoint', 'checkpoint_info', 'worker_id')
  if redis.call('HGET', jk, 'kind') == 'search' then  -- its remaining trials stop
    local st = redis.call('HGETALL', P..':ts:'..jid)
    for i = 1, #st, 2 do
      if st[i + 1] == 'pending' or st[i + 1] == 'running' then
        local m = jid..'|'..st[i]
        redis.call('HSET', P..':ts:'..jid, st[i], 'cancelled')
        redis.call('ZREM', P..':tq', m)
        redis.call('SREM', P..':trun', m)
        redis.call('DEL', P..':lease:'..m)
      end
    end
    redis.call('HSET', jk, 't_pending', 0, 't_running', 0)
  end
  redis.call('ZREM', P..':buffering', jid)
  redis.call('ZREM', P..':queued', jid)
  redis.call('SREM', P..':running', jid)
  if redis.call('GET', P..':busy:'..mid) == jid then redis.call('DEL', P..':busy:'..mid) end
  redis.call('DEL', P..':lease:'..jid)
end
local function fenced(P, jid, token)
  return token ~= '' and redis.call('GET', P..':lease:'..jid) ~= token
end
-- a search job in its trials stage ends (or goes to its apply stage) once nothing is left to run
local function settle(P, jid, now)
  local jk = P..':j:'..jid
  if redis.call('HGET', jk, 'stage') ~= 'trials' then return false end
  if tonumber(redis.call('HGET', jk, 't_running') or '0') > 0 then return false end
  local status = redis.call('HGET', jk, 'status')
  if status == 'cancelling' then finish(P, jid, 'cancelled', '0', '', '', '0', '', now); return 'cancelled' end
  if status ~= 'queued' and status ~= 'running' then return false end
  if tonumber(redis.call('HGET', jk, 't_pending') or '0') > 0 then return false end
  if tonumber(redis.call('HGET', jk, 't_ok') or '0') == 0 then
    finish(P, jid, 'failed', '0', '', '', '0', "every trial failed; see each trial's error", now)
    return 'failed'
  end
  if redis.call('HGET', jk, 'apply') == '1' then
    redis.call('HSET', jk, 'stage', 'apply', 'status', 'queued')
    redis.call('ZADD', P..':queued', redis.call('HGET', jk, 'seq'), jid)
    return 'apply'
  end
  finish(P, jid, 'succeeded', '0', '', '', '0', '', now)
  return 'succeeded'
end
local function trial_score(P, jid, idx)
  return tonumber(redis.call('HGET', P..':j:'..jid, 'seq')) * 100000 + tonumber(idx)
end
"""

_SCRIPTS = {
    "read_model": """
local P, mid, with_blob = ARGV[1], ARGV[2], ARGV[3]
local mk = P..':m:'..mid
local f = redis.call('HMGET', mk, 'uid', 'version', 'info', 'created_at', 'updated_at', 'owner')
if not f[1] then return false end
local latest = redis.call('ZREVRANGE', P..':mjobs:'..mid, 0, 0)
local lid, lstatus = '', ''
if latest[1] then lid = latest[1]; lstatus = redis.call('HGET', P..':j:'..lid, 'status') or '' end
local out = {f[1], f[2], f[3], f[4], f[5], redis.call('GET', P..':bufn:'..mid) or '0', lid, lstatus, f[6] or ''}
if with_blob == '1' then out[10] = redis.call('HGET', mk, 'blob') end
return out
""",
    "create_model": """
local P, mid, uid, info, blob, now, owner = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local mk = P..':m:'..mid
if redis.call('EXISTS', mk) == 1 then return 0 end
redis.call('HSET', mk, 'uid', uid, 'version', 1, 'info', info, 'blob', blob, 'created_at', now, 'updated_at', now)
redis.call('ZADD', P..':models', now, mid)
if owner ~= '' then
  redis.call('HSET', mk, 'owner', owner)
  redis.call('ZADD', P..':owned:'..owner, now, mid)
end
redis.call('DEL', P..':buf:'..mid, P..':bufn:'..mid, P..':mjobs:'..mid)
redis.call('SET', P..':conf:keep_versions', ARGV[9])
keep_version(P, mid, ARGV[8], now)
return 1
""",
    "replace_model": """
local P, mid, blob, info, expected, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local mk = P..':m:'..mid
local version = redis.call('HGET', mk, 'version')
if not version then return {'nf'} end
if expected ~= '' and expected ~= version then return {'vc', version} end
local busy = redis.call('GET', P..':busy:'..mid)
if busy then return {'busy', busy} end
redis.call('HINCRBY', mk, 'version', 1)
redis.call('HSET', mk, 'blob', blob, 'info', info, 'updated_at', now)
redis.call('SET', P..':conf:keep_versions', ARGV[8])
keep_version(P, mid, ARGV[7], now)
return {'ok'}
""",
    "delete_model": """
local P, mid, now = ARGV[1], ARGV[2], ARGV[3]
local mk = P..':m:'..mid
if redis.call('EXISTS', mk) == 0 then return false end
local cancelled = {}
for _, jid in ipairs(redis.call('ZRANGE', P..':mjobs:'..mid, 0, -1)) do
  local jk = P..':j:'..jid
  local status = redis.call('HGET', jk, 'status')
  if status == 'buffering' or status == 'queued' then
    redis.call('HSET', jk, 'status', 'cancelled', 'error', 'model deleted', 'finished_at', now)
    index_ended(P, jid, 'cancelled')
    redis.call('HDEL', jk, 'checkpoint', 'checkpoint_info')
    redis.call('ZREM', P..':buffering', jid)
    redis.call('ZREM', P..':queued', jid)
    table.insert(cancelled, jid)
  elseif status == 'running' or status == 'cancelling' then
    redis.call('HSET', jk, 'status', 'cancelling', 'error', 'model deleted')
    settle(P, jid, now)
    table.insert(cancelled, jid)
  end
  if status == 'buffering' or status == 'queued' or status == 'running' or status == 'cancelling' then
    redis.call('DEL', P..':js:'..jid)
  end
end
local owner = redis.call('HGET', mk, 'owner')
if owner then redis.call('ZREM', P..':owned:'..owner, mid) end
local uid = redis.call('HGET', mk, 'uid')
for _, v in ipairs(redis.call('ZRANGE', P..':vers:'..uid, 0, -1)) do redis.call('DEL', P..':v:'..uid..':'..v) end
redis.call('DEL', mk, P..':buf:'..mid, P..':bufn:'..mid, P..':mjobs:'..mid, P..':vers:'..uid)
redis.call('ZREM', P..':models', mid)
return cancelled
""",
    "append": """
local P, mid, max, n, blob = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
if redis.call('EXISTS', P..':m:'..mid) == 0 then return {'nf'} end
local size = tonumber(redis.call('GET', P..':bufn:'..mid) or '0')
if max > 0 and size + n > max then return {'full', size + n} end
redis.call('RPUSH', P..':buf:'..mid, blob)
return {'ok', redis.call('INCRBY', P..':bufn:'..mid, n)}
""",
    "clear": """
local P, mid = ARGV[1], ARGV[2]
if redis.call('EXISTS', P..':m:'..mid) == 0 then return false end
local n = tonumber(redis.call('GET', P..':bufn:'..mid) or '0')
redis.call('DEL', P..':buf:'..mid, P..':bufn:'..mid)
return n
""",
    "create_job": """
local P, jid, mid, params, min, consume, created, max, n, blob =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9]), ARGV[10]
local uid = redis.call('HGET', P..':m:'..mid, 'uid')
if not uid then return {'nf'} end
local owner, search = ARGV[11], ARGV[12] == 'search'
local seq = redis.call('INCR', P..':seq')
redis.call('HSET', P..':j:'..jid, 'model_id', mid, 'model_uid', uid, 'status', 'buffering', 'params', params,
  'min_samples', min, 'consume_buffer', consume, 'n_samples', 0, 'epochs_done', 0, 'history', '[]',
  'created_at', created, 'seq', seq, 'restarts', 0)
if owner ~= '' then redis.call('HSET', P..':j:'..jid, 'owner', owner) end
redis.call('ZADD', P..':buffering', seq, jid)
redis.call('ZADD', P..':mjobs:'..mid, seq, jid)
for _, index in ipairs({'jobs', 'jobs:active', 'jobs:m:'..mid, 'jobs:k:'..(search and 'search' or 'training')}) do
  redis.call('ZADD', P..':'..index, seq, jid)  -- GET /jobs (list_all_jobs)
end
if search then  -- ARGV[13]: apply_best, then one {"params", "seed"} per trial
  redis.call('HSET', P..':j:'..jid, 'kind', 'search', 'stage', 'trials', 'apply', ARGV[13], 't_pending', #ARGV - 13,
    't_running', 0, 't_ok', 0)
  for i = 14, #ARGV do
    redis.call('HSET', P..':tp:'..jid, i - 14, ARGV[i])
    redis.call('HSET', P..':ts:'..jid, i - 14, 'pending')
  end
end
if n > 0 then  -- inline samples are the job's own: queued at once, the buffer untouched
  redis.call('RPUSH', P..':js:'..jid, blob)
  redis.call('HSET', P..':j:'..jid, 'status', 'queued', 'n_samples', n)
  redis.call('ZREM', P..':buffering', jid)
  if not search then
    redis.call('ZADD', P..':queued', seq, jid)
    return {'queued', 1}
  end
  for i = 14, #ARGV do redis.call('ZADD', P..':tq', trial_score(P, jid, i - 14), jid..'|'..(i - 14)) end
  return {'queued', #ARGV - 13}
end
return {'ok'}
""",
    "promote": """
local P = ARGV[1]
local promoted, blocked = {}, {}
for _, jid in ipairs(redis.call('ZRANGE', P..':buffering', 0, -1)) do
  local jk = P..':j:'..jid
  local mid = redis.call('HGET', jk, 'model_id')
  if not blocked[mid] then
    local available = tonumber(redis.call('GET', P..':bufn:'..mid) or '0')
    if available < tonumber(redis.call('HGET', jk, 'min_samples')) then
      blocked[mid] = true
    else
      local buf, js = P..':buf:'..mid, P..':js:'..jid
      if redis.call('HGET', jk, 'consume_buffer') == '1' then
        if redis.call('EXISTS', buf) == 1 then redis.call('RENAME', buf, js) end
        redis.call('DEL', P..':bufn:'..mid)
      else
        for _, item in ipairs(redis.call('LRANGE', buf, 0, -1)) do redis.call('RPUSH', js, item) end
      end
      redis.call('HSET', jk, 'status', 'queued', 'n_samples', available)
      redis.call('ZREM', P..':buffering', jid)
      if redis.call('HGET', jk, 'stage') == 'trials' then  -- one id per trial: the runner dispatches each
        local st = redis.call('HGETALL', P..':ts:'..jid)
        for i = 1, #st, 2 do
          if st[i + 1] == 'pending' then
            redis.call('ZADD', P..':tq', trial_score(P, jid, st[i]), jid..'|'..st[i])
            table.insert(promoted, jid)
          end
        end
      else
        redis.call('ZADD', P..':queued', redis.call('HGET', jk, 'seq'), jid)
        table.insert(promoted, jid)
      end
    end
  end
end
return promoted
""",
    "claim": """
local P, want, worker, token, lease_ms, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local function runnable(jid)
  local jk = P..':j:'..jid
  if redis.call('HGET', jk, 'status') ~= 'queued' or redis.call('HGET', jk, 'stage') == 'trials' then return false end
  return not redis.call('GET', P..':busy:'..redis.call('HGET', jk, 'model_id'))
end
local jid = false
if want ~= '' then
  if runnable(want) then jid = want end
else
  for _, candidate in ipairs(redis.call('ZRANGE', P..':queued', 0, -1)) do
    if runnable(candidate) then jid = candidate; break end
  end
end
if not jid then return false end
local jk = P..':j:'..jid
redis.call('HSET', jk, 'status', 'running', 'worker_id', worker)
if not redis.call('HGET', jk, 'started_at') then redis.call('HSET', jk, 'started_at', now) end
redis.call('ZREM', P..':queued', jid)
redis.call('SADD', P..':running', jid)
redis.call('SET', P..':busy:'..redis.call('HGET', jk, 'model_id'), jid)
redis.call('SET', P..':lease:'..jid, token, 'PX', lease_ms)
return jid
""",
    "renew": """
local P, jid, token, lease_ms = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('GET', P..':lease:'..jid) ~= token then return 0 end
redis.call('PEXPIRE', P..':lease:'..jid, lease_ms)
return 1
""",
    "release": """
local P, jid, token = ARGV[1], ARGV[2], ARGV[3]
if redis.call('GET', P..':lease:'..jid) == token then redis.call('DEL', P..':lease:'..jid) end
return 1
""",
    "progress": """
local P, jid, token, progress = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if fenced(P, jid, token) then return -1 end
local status = redis.call('HGET', P..':j:'..jid, 'status')
if status == 'running' or status == 'cancelling' then redis.call('HSET', P..':j:'..jid, 'progress', progress) end
return 1
""",
    "checkpoint": """
local P, jid, token, blob, info, epochs, history, progress = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
if fenced(P, jid, token) then return -1 end
local status = redis.call('HGET', P..':j:'..jid, 'status')
if status == 'running' or status == 'cancelling' then
  redis.call('HSET', P..':j:'..jid, 'checkpoint', blob, 'checkpoint_info', info, 'epochs_done', epochs,
    'history', history, 'progress', progress)
end
return 1
""",
    "cancel": """
local P, jid, now = ARGV[1], ARGV[2], ARGV[3]
local status = redis.call('HGET', P..':j:'..jid, 'status')
if not status then return {'nf'} end
if status == 'buffering' or status == 'queued' then
  finish(P, jid, 'cancelled', '0', '', '', '1', '', now)
elseif status == 'running' then
  redis.call('HSET', P..':j:'..jid, 'status', 'cancelling')
  settle(P, jid, now)
elseif status ~= 'cancelling' then
  return {'done', status}
end
return {'ok'}
""",
    "finish": """
local P, jid, token, status, has_blob, blob, info, use_ckpt, err, now =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]
if not redis.call('HGET', P..':j:'..jid, 'status') then return {'nf'} end
if fenced(P, jid, token) then return {'lost'} end
finish(P, jid, status, has_blob, blob, info, use_ckpt, err, now)
return {'ok'}
""",
    "claim_trial": """
local P, want, worker, token, lease_ms, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
for _, m in ipairs(redis.call('ZRANGE', P..':tq', 0, -1)) do
  local sep = string.find(m, '|', 1, true)
  local jid, idx = string.sub(m, 1, sep - 1), string.sub(m, sep + 1)
  local jk = P..':j:'..jid
  local status = redis.call('HGET', jk, 'status')
  if (want == '' or want == jid) and (status == 'queued' or status == 'running')
      and redis.call('HGET', jk, 'stage') == 'trials' and redis.call('HGET', P..':ts:'..jid, idx) == 'pending' then
    redis.call('ZREM', P..':tq', m)
    redis.call('SADD', P..':trun', m)
    redis.call('HSET', P..':ts:'..jid, idx, 'running')
    redis.call('HSET', P..':tr:'..jid, idx, '{"worker_id": '..cjson.encode(worker)..', "started_at": '..now..'}')
    redis.call('HINCRBY', jk, 't_pending', -1)
    redis.call('HINCRBY', jk, 't_running', 1)
    redis.call('HSET', jk, 'status', 'running')
    if not redis.call('HGET', jk, 'started_at') then redis.call('HSET', jk, 'started_at', now) end
    redis.call('SET', P..':lease:'..m, token, 'PX', lease_ms)
    return {jid, idx}
  end
end
return false
""",
    "finish_trial": """
local P, jid, idx, token, status, result, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local jk, m = P..':j:'..jid, jid..'|'..idx
if not redis.call('HGET', jk, 'status') then return {'nf'} end
if redis.call('HGET', P..':ts:'..jid, idx) ~= 'running' then return {'ok', ''} end  -- cancelled meanwhile
if fenced(P, m, token) then return {'lost'} end
redis.call('HSET', P..':ts:'..jid, idx, status)
redis.call('HSET', P..':tr:'..jid, idx, result)
redis.call('SREM', P..':trun', m)
redis.call('DEL', P..':lease:'..m)
redis.call('HINCRBY', jk, 't_running', -1)
if status == 'succeeded' then redis.call('HINCRBY', jk, 't_ok', 1) end
return {'ok', settle(P, jid, now) or ''}
""",
    # with only_expired: only when the trial's lease is gone (its worker was killed); else fenced by the token
    "release_trial": """
local P, jid, idx, token, only_expired, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local jk, m = P..':j:'..jid, jid..'|'..idx
if not redis.call('HGET', jk, 'status') then redis.call('SREM', P..':trun', m); return {'nf'} end
if redis.call('HGET', P..':ts:'..jid, idx) ~= 'running' then redis.call('SREM', P..':trun', m); return {'ok', ''} end
if only_expired == '1' then
  if redis.call('EXISTS', P..':lease:'..m) == 1 then return {'alive'} end
elseif fenced(P, m, token) then
  return {'lost'}
end
redis.call('HSET', P..':ts:'..jid, idx, 'pending')
redis.call('HDEL', P..':tr:'..jid, idx)
redis.call('SREM', P..':trun', m)
redis.call('DEL', P..':lease:'..m)
redis.call('HINCRBY', jk, 't_running', -1)
redis.call('HINCRBY', jk, 't_pending', 1)
redis.call('ZADD', P..':tq', trial_score(P, jid, idx), m)
return {'ok', settle(P, jid, now) or 'pending'}
""",
    # running -> queued (checkpoint kept), cancelling -> cancelled; with only_expired, only when the
    # lease is gone, and then the history records the restart.
    "requeue": """
local P, jid, token, only_expired, note, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local jk = P..':j:'..jid
local status = redis.call('HGET', jk, 'status')
if status ~= 'running' and status ~= 'cancelling' then redis.call('SREM', P..':running', jid); return false end
if only_expired == '1' then
  if redis.call('EXISTS', P..':lease:'..jid) == 1 then return false end
elseif fenced(P, jid, token) then
  return {'lost'}
end
if status == 'cancelling' then
  finish(P, jid, 'cancelled', '0', '', '', '1', '', now)
  return 'cancelled'
end
local mid = redis.call('HGET', jk, 'model_id')
redis.call('HSET', jk, 'status', 'queued')
redis.call('HDEL', jk, 'worker_id')
redis.call('SREM', P..':running', jid)
redis.call('ZADD', P..':queued', redis.call('HGET', jk, 'seq'), jid)
if redis.call('GET', P..':busy:'..mid) == jid then redis.call('DEL', P..':busy:'..mid) end
redis.call('DEL', P..':lease:'..jid)
if note ~= '' then
  local restarts = redis.call('HINCRBY', jk, 'restarts', 1)
  local entry = string.gsub(note, '"restart": 0', '"restart": '..restarts)
  local history = redis.call('HGET', jk, 'history') or '[]'
  if history == '[]' then history = '['..entry..']' else history = string.sub(history, 1, -2)..', '..entry..']' end
  redis.call('HSET', jk, 'history', history)
end
return 'queued'
""",
}


def _guard(method: Callable) -> Callable:
    """Redis down or too slow: a StoreUnavailable (503) that says so, never a hang or a 500."""

    @wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailable(f"the Redis store at {self.url_for_humans} is unreachable ({exc.__class__.__name__}: "
                                   f"{exc}); retry in a few seconds") from None

    return wrapper


class RedisStore(Store):
    def __init__(self, url: str, *, prefix: str = "nn", lease_seconds: float = 10.0, socket_timeout: float = 5.0,
                 retries: int = 0, on_queued: Callable[[list[str]], None] | None = None, keep_versions: int = 10):
        self.prefix = prefix
        self.keep_versions = keep_versions  # the scripts that change weights store it in P:conf:keep_versions
        self.lease_ms = int(lease_seconds * 1000)
        self.on_queued = on_queued  # called with the ids of jobs that became queued (the runner enqueues them)
        # retries=0 (the API): a request answers 503 at once; workers ride out short outages
        retry = Retry(ExponentialBackoff(cap=2.0, base=0.1), retries) if retries else Retry(NoBackoff(), 0)
        self.redis = redis.Redis.from_url(url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout,
                                          health_check_interval=30, retry=retry)
        kwargs = self.redis.connection_pool.connection_kwargs
        self.url_for_humans = f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"
        self._scripts = {name: self.redis.register_script(_FINISH + body) for name, body in _SCRIPTS.items()}
        self._tokens: dict[str, str] = {}  # job_id -> lease token, for the jobs this store claimed
        self._lock = threading.Lock()

    def _run(self, name: str, *args) -> Any:
        return self._scripts[name](args=[self.prefix, *args])

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _token(self, job_id: str) -> str:
        with self._lock:
            return self._tokens.get(job_id, "")

    def _notify(self, job_ids: list[str]) -> None:
        if job_ids and self.on_queued is not None:
            try:
                self.on_queued(job_ids)
            except Exception:  # the sweepers enqueue it later
                log.exception("could not enqueue jobs %s; a worker's sweeper will", job_ids)

    # -- plumbing beyond the Store interface ----------------------------------------------
    def ping(self) -> bool:
        return bool(self.redis.ping())

    def close(self) -> None:
        self.redis.close()

    def reset(self) -> None:
        """Deletes every key under the prefix (tests and benchmarks)."""
        keys = list(self.redis.scan_iter(match=f"{self.prefix}:*", count=1000))
        for i in range(0, len(keys), 500):
            self.redis.delete(*keys[i:i + 500])

    @staticmethod
    def _model(mid: str, f: list) -> ModelRecord:
        latest = {"job_id": f[6].decode(), "status": f[7].decode()} if f[6] else None
        return ModelRecord(model_id=mid, uid=f[0].decode(), version=int(f[1]), info=json.loads(f[2]),
                           created_at=float(f[3]), updated_at=float(f[4]), buffer_size=int(f[5]), latest_job=latest,
                           owner=f[8].decode() or None)

    @staticmethod
    def _job(job_id: str, f: list) -> JobRecord:
        v = dict(zip(JOB_FIELDS, (None if x is None else x.decode() for x in f)))
        num = lambda key, cast: None if v[key] is None else cast(v[key])  # noqa: E731
        return JobRecord(
            job_id=job_id, model_id=v["model_id"], model_uid=v["model_uid"], status=v["status"],
            params=json.loads(v["params"]), min_samples=int(v["min_samples"]), consume_buffer=v["consume_buffer"] == "1",
            n_samples=int(v["n_samples"]), epochs_done=int(v["epochs_done"]),
            progress=json.loads(v["progress"]) if v["progress"] else None, history=json.loads(v["history"]),
            error=v["error"], worker_id=v["worker_id"], model_version=num("model_version", int),
            created_at=float(v["created_at"]), started_at=num("started_at", float), finished_at=num("finished_at", float),
            kind=v["kind"] or "training", stage=v["stage"], owner=v["owner"],
        )

    def _with_trials(self, job: JobRecord) -> JobRecord:
        if job.kind != "search":
            return job
        pipe = self.redis.pipeline(transaction=True)  # one snapshot of the three hashes
        for part in ("tp", "ts", "tr"):
            pipe.hgetall(self._key(part, job.job_id))
        specs, statuses, results = pipe.execute()
        trials = []
        for raw_index, spec in specs.items():
            index = int(raw_index)
            trial = new_trial(index, **json.loads(spec))
            trial["status"] = statuses.get(raw_index, b"pending").decode()
            trial.update(json.loads(results[raw_index]) if raw_index in results else {})
            trials.append(trial)
        return with_trials(job, trials)

    # -- models -------------------------------------------------------------------
    @_guard
    def create_model(self, model_id: str, blob: bytes, info: dict, owner: str | None = None,
                     source: dict | None = None) -> ModelRecord:
        if not self._run("create_model", model_id, uuid.uuid4().hex, json.dumps(info), blob, repr(time.time()), owner or "",
                         json.dumps(source or source_of("create")), self.keep_versions):
            raise ModelExists(model_id)
        return self.get_model(model_id)

    @_guard
    def get_model(self, model_id: str) -> ModelRecord:
        f = self._run("read_model", model_id, "0")
        if not f:
            raise ModelNotFound(model_id)
        return self._model(model_id, f)

    def _owned_jobs(self, index: str, owner: str, offset: int, limit: int) -> tuple[list[str], int]:
        """A page (newest first) of the job ids in the zset ``index`` that ``owner`` submitted, and how many did.
        Reads the owners 500 at a time: O(the model's jobs), bounded memory."""
        page, total, start, chunk = [], 0, 0, 500
        while True:
            ids = self.redis.zrevrange(index, start, start + chunk - 1)
            if not ids:
                return page, total
            pipe = self.redis.pipeline(transaction=False)
            for raw in ids:
                pipe.hget(self._key("j", raw.decode()), "owner")
            for raw, found in zip(ids, pipe.execute()):
                if found is not None and found.decode() == owner:
                    if offset <= total < offset + limit:
                        page.append(raw.decode())
                    total += 1
            start += chunk

    @_guard
    def list_models(self, offset: int, limit: int, owner: str | None = None) -> tuple[list[ModelRecord], int]:
        index = self._key("owned", owner) if owner is not None else self._key("models")
        ids = [m.decode() for m in self.redis.zrange(index, offset, offset + limit - 1)]
        pipe = self.redis.pipeline(transaction=False)
        for mid in ids:
            self._scripts["read_model"](args=[self.prefix, mid, "0"], client=pipe)
        rows = pipe.execute() if ids else []
        records = [self._model(mid, f) for mid, f in zip(ids, rows) if f]
        return records, int(self.redis.zcard(index))

    @_guard
    def model_stamp(self, model_id: str) -> tuple[str, int]:
        uid, version = self.redis.hmget(self._key("m", model_id), ["uid", "version"])
        if uid is None:
            raise ModelNotFound(model_id)
        return uid.decode(), int(version)

    @_guard
    def load_model(self, model_id: str) -> tuple[bytes, ModelRecord]:
        f = self._run("read_model", model_id, "1")
        if not f:
            raise ModelNotFound(model_id)
        return bytes(f[9]), self._model(model_id, f)

    @_guard
    def replace_model(self, model_id: str, blob: bytes, info: dict, expected_version: int | None = None,
                      source: dict | None = None) -> ModelRecord:
        r = self._run("replace_model", model_id, blob, json.dumps(info),
                      "" if expected_version is None else str(expected_version), repr(time.time()),
                      json.dumps(source or source_of("put")), self.keep_versions)
        code = r[0].decode()
        if code == "nf":
            raise ModelNotFound(model_id)
        if code == "vc":
            raise VersionConflict(f"model {model_id!r} is at version {int(r[1])}, not {expected_version}; "
                                  f"GET its weights again and retry")
        if code == "busy":
            busy = r[1].decode()
            raise ModelBusy(f"model {model_id!r} is being trained by job {busy!r}; wait for it to finish "
                            f"or cancel it with POST /jobs/{busy}/cancel")
        return self.get_model(model_id)

    @_guard
    def delete_model(self, model_id: str) -> list[str]:
        r = self._run("delete_model", model_id, repr(time.time()))
        if r is None:
            raise ModelNotFound(model_id)
        return [j.decode() for j in r]

    # -- versions (api/storage/redis_registry.py) ----------------------------------------
    @_guard
    def list_versions(self, model_id: str) -> list[VersionRecord]:
        return registry.list_versions(self, model_id)

    @_guard
    def get_version(self, model_id: str, version: int) -> tuple[bytes, VersionRecord]:
        return registry.get_version(self, model_id, version)

    # -- training buffer ------------------------------------------------------
    def _full(self, model_id: str, size: int, max_buffer: int) -> PayloadTooLarge:
        return PayloadTooLarge(f"the buffer of model {model_id!r} would hold {size} samples, more than "
                               f"NN_MAX_BUFFER_SAMPLES={max_buffer}; train on it or clear it first")

    @_guard
    def append_samples(self, model_id: str, x: np.ndarray, y: np.ndarray, max_buffer: int) -> int:
        r = self._run("append", model_id, max_buffer, len(x), pack_samples(x, y))
        code = r[0].decode()
        if code == "nf":
            raise ModelNotFound(model_id)
        if code == "full":
            raise self._full(model_id, int(r[1]), max_buffer)
        return int(r[1])

    @_guard
    def count_samples(self, model_id: str) -> int:
        return self.get_model(model_id).buffer_size

    @_guard
    def clear_samples(self, model_id: str) -> int:
        r = self._run("clear", model_id)
        if r is None:
            raise ModelNotFound(model_id)
        return int(r)

    # -- jobs -----------------------------------------------------------------
    @_guard
    def create_job(self, job: JobRecord, x: np.ndarray | None = None, y: np.ndarray | None = None, max_buffer: int = 0) -> JobRecord:
        n = 0 if x is None else len(x)
        r = self._run("create_job", job.job_id, job.model_id, json.dumps(job.params), job.min_samples,
                      int(job.consume_buffer), repr(job.created_at), max_buffer, n, pack_samples(x, y) if n else b"",
                      job.owner or "")
        code = r[0].decode()
        if code == "nf":
            raise ModelNotFound(job.model_id)
        if code == "queued":
            self._notify([job.job_id])
        return self.get_job(job.job_id)

    @_guard
    def get_job(self, job_id: str) -> JobRecord:
        f = self.redis.hmget(self._key("j", job_id), JOB_FIELDS)
        if f[0] is None:
            raise JobNotFound(job_id)
        return self._with_trials(self._job(job_id, f))

    @_guard
    def list_jobs(self, model_id: str, offset: int, limit: int, owner: str | None = None) -> tuple[list[JobRecord], int]:
        self.get_model(model_id)
        key = self._key("mjobs", model_id)
        if owner is not None:
            ids, total = self._owned_jobs(key, owner, offset, limit)
        else:
            ids = [j.decode() for j in self.redis.zrevrange(key, offset, offset + limit - 1)]
            total = None
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(self._key("j", job_id), JOB_FIELDS)
        rows = pipe.execute() if ids else []
        return ([self._with_trials(self._job(j, f)) for j, f in zip(ids, rows) if f[0] is not None],
                int(self.redis.zcard(key)) if total is None else total)

    @_guard
    def promote_ready_jobs(self) -> list[JobRecord]:
        if not self.redis.exists(self._key("buffering")):
            return []  # the common case runs no script
        ids = [j.decode() for j in self._run("promote")]  # a search job once per pending trial
        self._notify(ids)
        return [self.get_job(j) for j in dict.fromkeys(ids)]

    @_guard
    def claim_job(self, worker_id: str, job_id: str | None = None) -> JobRecord | None:
        """As the interface says; with ``job_id``, that job only (the RQ runner's case). Takes a lease."""
        token = uuid.uuid4().hex
        claimed = self._run("claim", job_id or "", worker_id, token, self.lease_ms, repr(time.time()))
        if not claimed:
            return None
        claimed = claimed.decode()
        with self._lock:
            self._tokens[claimed] = token
        return self.get_job(claimed)

    @_guard
    def renew_lease(self, job_id: str) -> bool:
        """Extends this store's lease on a job it claimed; False once it was lost."""
        token = self._token(job_id)
        return bool(token) and bool(self._run("renew", job_id, token, self.lease_ms))

    @_guard
    def release_lease(self, job_id: str) -> None:
        with self._lock:
            token = self._tokens.pop(job_id, "")
        if token:
            self._run("release", job_id, token)

    @_guard
    def job_samples(self, job_id: str) -> tuple[np.ndarray, np.ndarray]:
        blobs = self.redis.lrange(self._key("js", job_id), 0, -1)
        if not blobs:
            return np.empty((0, 0)), np.empty((0, 0))
        pairs = [unpack_samples(b) for b in blobs]
        return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])

    def _check(self, job_id: str, result: Any) -> None:
        if result == -1 or (isinstance(result, list) and result and result[0] == b"lost"):
            raise LeaseLost(f"job {job_id}: this worker's lease expired; another worker owns the job now")

    @_guard
    def set_progress(self, job_id: str, progress: dict) -> None:
        self._check(job_id, self._run("progress", job_id, self._token(job_id), json.dumps(progress)))

    @_guard
    def save_checkpoint(self, job_id: str, blob: bytes, info: dict, epochs_done: int, history: list[dict],
                        progress: dict) -> None:
        self._check(job_id, self._run("checkpoint", job_id, self._token(job_id), blob, json.dumps(info), epochs_done,
                                      json.dumps(history), json.dumps(progress)))

    @_guard
    def load_checkpoint(self, job_id: str) -> bytes | None:
        checkpoint, status = self.redis.hmget(self._key("j", job_id), ["checkpoint", "status"])
        if status is None:
            raise JobNotFound(job_id)
        return None if checkpoint is None else bytes(checkpoint)

    @_guard
    def cancel_job(self, job_id: str) -> JobRecord:
        r = self._run("cancel", job_id, repr(time.time()))
        code = r[0].decode()
        if code == "nf":
            raise JobNotFound(job_id)
        if code == "done":
            raise JobNotCancellable(f"job {job_id!r} already ended {r[1].decode()!r}; only waiting or running jobs "
                                    f"can be cancelled")
        return self.get_job(job_id)

    @_guard
    def cancel_requested(self, job_id: str) -> bool:
        status = self.redis.hget(self._key("j", job_id), "status")
        if status != b"running":
            return True
        token = self._token(job_id)
        return bool(token) and self.redis.get(self._key("lease", job_id)) != token.encode()

    @_guard
    def finish_job(self, job_id: str, status: str, *, blob: bytes | None = None, info: dict | None = None,
                   use_checkpoint: bool = False, error: str | None = None) -> JobRecord:
        r = self._run("finish", job_id, self._token(job_id), status, "1" if blob is not None else "0", blob or b"",
                      json.dumps(info) if blob is not None else "", "1" if use_checkpoint else "0", error or "",
                      repr(time.time()))
        if r[0] == b"nf":
            raise JobNotFound(job_id)
        self._check(job_id, r)
        with self._lock:
            self._tokens.pop(job_id, None)
        return self.get_job(job_id)

    def _requeue(self, job_id: str, only_expired: bool, note: str) -> str | None:
        r = self._run("requeue", job_id, self._token(job_id), "1" if only_expired else "0", note, repr(time.time()))
        self._check(job_id, r)
        if r is not None:
            with self._lock:
                self._tokens.pop(job_id, None)
        return None if r is None else r.decode()

    @_guard
    def requeue_jobs(self, *, worker_ids: list[str] | None = None, job_ids: list[str] | None = None) -> list[JobRecord]:
        active = [j.decode() for j in self.redis.smembers(self._key("running"))]
        pipe = self.redis.pipeline(transaction=False)
        for job_id in active:
            pipe.hmget(self._key("j", job_id), ["worker_id", "seq"])
        rows = pipe.execute() if active else []
        chosen = []
        for job_id, (worker, seq) in zip(active, rows):
            if worker_ids is not None and (worker is None or worker.decode() not in worker_ids):
                continue
            if job_ids is not None and job_id not in job_ids:
                continue
            chosen.append((int(seq or 0), job_id))
        changed, queued = [], []
        for raw in self.redis.smembers(self._key("trun")):  # search trials of those workers: back to pending
            job_id, index = raw.decode().split("|")
            run = json.loads(self.redis.hget(self._key("tr", job_id), index) or "{}")
            if (worker_ids is None or run.get("worker_id") in worker_ids) and (job_ids is None or job_id in job_ids):
                r = self._run("release_trial", job_id, index, self._token(raw.decode()), "0", repr(time.time()))
                if r[0] == b"ok" and r[1] == b"pending":
                    queued.append(job_id)
        for _, job_id in sorted(chosen):
            if self._requeue(job_id, False, "") is not None:
                changed.append(self.get_job(job_id))
                if changed[-1].status == "queued":
                    queued.append(job_id)
        self._notify(queued)
        return changed

    # -- what the runner needs ---------------------------------------------------------
    @_guard
    def recover_expired_trials(self) -> list[str]:
        """Running trials whose worker's lease expired go back to pending; returns their job ids."""
        jobs = []
        for raw in self.redis.smembers(self._key("trun")):
            job_id, index = raw.decode().split("|")
            if self.redis.exists(self._key("lease", raw.decode())):
                continue
            r = self._run("release_trial", job_id, index, "", "1", repr(time.time()))
            if r[0] == b"ok" and r[1] in (b"pending", b"apply"):
                log.warning("search %s: trial %s lost its worker; it runs again", job_id, index)
                jobs.append(job_id)
        self._notify(jobs)
        return jobs

    @_guard
    def recover_expired(self) -> list[JobRecord]:
        """Jobs whose worker's lease expired (killed, stalled, cut off): back to the queue from their
        checkpoint, with a restart note in their history; ``cancelling`` ones end ``cancelled``."""
        changed, queued = [], []
        for raw in self.redis.smembers(self._key("running")):
            job_id = raw.decode()
            if self.redis.exists(self._key("lease", job_id)):
                continue
            epochs = self.redis.hget(self._key("j", job_id), "epochs_done")
            note = json.dumps({"event": "restart", "restart": 0, "epoch": int(epochs or 0), "time": time.time(),
                               "reason": "the worker stopped renewing its lease (killed or cut off); "
                                         f"resumed from the checkpoint after epoch {int(epochs or 0)}"})
            status = self._requeue(job_id, True, note)
            if status is not None:
                changed.append(self.get_job(job_id))
                log.warning("job %s: lease expired; %s", job_id, "requeued" if status == "queued" else status)
                if status == "queued":
                    queued.append(job_id)
        self._notify(queued)
        return changed

    @_guard
    def runnable_queued(self) -> list[str]:
        """Queued jobs, oldest first, whose model no job trains now; then search jobs with pending trials."""
        pending = [m.decode().split("|")[0] for m in self.redis.zrange(self._key("tq"), 0, -1)]
        return self._runnable_training() + list(dict.fromkeys(pending))

    def _runnable_training(self) -> list[str]:
        ids = [j.decode() for j in self.redis.zrange(self._key("queued"), 0, -1)]
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(self._key("j", job_id), "model_id")
        models = pipe.execute() if ids else []
        pipe = self.redis.pipeline(transaction=False)
        for mid in models:
            pipe.exists(self._key("busy", (mid or b"").decode()))
        busy = pipe.execute() if ids else []
        return [j for j, b in zip(ids, busy) if not b]

    def _jobs(self, ids: list[str]) -> list[JobRecord]:
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(self._key("j", job_id), JOB_FIELDS)
        rows = pipe.execute() if ids else []
        return [self._with_trials(self._job(j, f)) for j, f in zip(ids, rows) if f[0] is not None]

    @_guard
    def list_all_jobs(self, offset: int, limit: int, *, status: str | None = None, model_id: str | None = None,
                      kind: str | None = None, owner: str | None = None) -> tuple[list[JobRecord], int]:
        return registry.list_all_jobs(self, offset, limit, status, model_id, kind, owner)

    @_guard
    def index_existing_jobs(self) -> int:
        """Jobs stored before GET /jobs had its indexes get them (once per prefix; at the API's start)."""
        return registry.index_existing_jobs(self)

    # -- notifications (api/storage/redis_registry.py) --------------------------------------
    @_guard
    def add_notification(self, note: Notification) -> None:
        registry.add_notification(self, note)

    @_guard
    def get_notifications(self, job_ids: list[str]) -> dict[str, Notification]:
        return registry.get_notifications(self, job_ids)

    @_guard
    def due_notifications(self, now: float, limit: int) -> list[tuple[Notification, JobRecord]]:
        return registry.due_notifications(self, now, limit)

    @_guard
    def record_attempt(self, job_id: str, *, status: str, error: str | None, next_attempt_at: float, now: float) -> None:
        registry.record_attempt(self, job_id, status, error, next_attempt_at, now)

    @_guard
    def count_queued(self) -> int:
        return int(self.redis.zcard(self._key("queued")))

    # -- search jobs ------------------------------------------------------------------
    @_guard
    def create_search_job(self, job: JobRecord, trials: list[dict], x: np.ndarray | None = None,
                          y: np.ndarray | None = None, max_buffer: int = 0) -> JobRecord:
        if [t["index"] for t in trials] != list(range(len(trials))):
            raise ValueError("trials must be indexed 0, 1, ... in order")
        n = 0 if x is None else len(x)
        r = self._run("create_job", job.job_id, job.model_id, json.dumps(job.params), job.min_samples,
                      int(job.consume_buffer), repr(job.created_at), max_buffer, n, pack_samples(x, y) if n else b"",
                      job.owner or "", "search", "1" if job.params.get("apply_best") else "0",
                      *[json.dumps({"params": t["params"], "seed": t["seed"]}) for t in trials])
        code = r[0].decode()
        if code == "nf":
            raise ModelNotFound(job.model_id)
        if code == "full":
            raise self._full(job.model_id, int(r[1]), max_buffer)
        if code == "queued":
            self._notify([job.job_id] * int(r[1]))  # the runner dispatches each trial
        return self.get_job(job.job_id)

    @_guard
    def claim_trial(self, worker_id: str, job_id: str | None = None) -> tuple[JobRecord, dict] | None:
        if not self.redis.exists(self._key("tq")):
            return None
        token = uuid.uuid4().hex
        claimed = self._run("claim_trial", job_id or "", worker_id, token, self.lease_ms, repr(time.time()))
        if not claimed:
            return None
        job_id, index = claimed[0].decode(), int(claimed[1])
        with self._lock:
            self._tokens[f"{job_id}|{index}"] = token
        job = self.get_job(job_id)
        return job, next(t for t in job.trials if t["index"] == index)

    def _after_trial(self, job_id: str, index: int, r: list) -> JobRecord:
        if r[0] == b"nf":
            raise JobNotFound(job_id)
        if r[0] == b"lost":
            raise LeaseLost(f"search {job_id} trial {index}: this worker's lease expired; another worker runs it now")
        with self._lock:
            self._tokens.pop(f"{job_id}|{index}", None)
        if r[1] in (b"apply", b"pending"):
            self._notify([job_id])  # the apply stage, or the trial again
        return self.get_job(job_id)

    @_guard
    def finish_trial(self, job_id: str, index: int, status: str, *, score: float | None = None,
                     metrics: dict | None = None, error: str | None = None) -> JobRecord:
        raw = self.redis.hget(self._key("tr", job_id), str(index))
        result = {**(json.loads(raw) if raw else {}), "score": score, "metrics": metrics, "error": error,
                  "finished_at": time.time()}
        r = self._run("finish_trial", job_id, index, self._token(f"{job_id}|{index}"), status, json.dumps(result),
                      repr(time.time()))
        return self._after_trial(job_id, index, r)

    @_guard
    def release_trial(self, job_id: str, index: int) -> JobRecord:
        r = self._run("release_trial", job_id, index, self._token(f"{job_id}|{index}"), "0", repr(time.time()))
        return self._after_trial(job_id, index, r)
