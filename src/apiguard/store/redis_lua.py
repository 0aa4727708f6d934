"""The Lua scripts of `apiguard.store.redis`: one call per checkpoint, one per flush of
what follows responses (detector observations, refunds, bans imposed or lifted).

Every key a script touches is built inside it from the deployment's prefix, which carries
a Redis Cluster hash tag (`{apiguard}:`): all of a deployment's keys sit in one slot, so
no script can raise CROSSSLOT, and `KEYS[1]` (the ban sequence key) routes the call.

The window arithmetic is `MemoryStore._execute`'s, statement for statement (bucket
indices are Python's float floor division, floats travel as "%.17g" strings), so both
stores answer the same schedule alike (tests/test_redis_store.py holds them to it).

Key layout under the prefix P (every key expires):
  P w:<window>   hash: h = newest bucket index, <bucket index> = count
  P m:<marker>   string: when the marked unit stops counting (a `once` marker)
  P s:<subject>  hash: strike window (h, buckets), lv = ban level, lb = end of last ban
  P b:<key>      hash: a ban: u = till, l = level, o = owner, a = action, r = reason
  P seq, P recent   ban change counter and (key -> change number) sorted set: workers
                 read the changes since their last call in every reply (local ban caches)
  P t:<key>, P t:<key>:c, P t:<key>:o   a detector tally (hash; HyperLogLogs)
  P r:<key>      a detector stride run (hash)
  P secret       the shared keyed-hash secret (hex), refreshed by every checkpoint
"""

from __future__ import annotations

_COMMON = r"""
local P = ARGV[1]
local now
if ARGV[2] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[2])
end
local margin = tonumber(ARGV[3])
local NEG = -math.huge

local function fmt(x)
  return string.format('%.17g', x)
end

-- Python's float floor division (exact where math.floor(a / b) may round)
local function floordiv(a, b)
  local mod = math.fmod(a, b)
  local div = (a - mod) / b
  if mod ~= 0 and ((b < 0) ~= (mod < 0)) then
    div = div - 1
  end
  if div ~= 0 then
    local f = math.floor(div)
    if div - f > 0.5 then f = f + 1 end
    return f
  end
  return 0
end

local function ttl_ms(seconds)
  local ms = math.ceil((seconds + margin) * 1000)
  if ms < 1 then ms = 1 end
  return ms
end

-- a bucket window: {head, c = {[index] = count}, total}
local function parse_window(flat, w)
  for i = 1, #flat, 2 do
    local f = flat[i]
    local v = tonumber(flat[i + 1])
    if f == 'h' then
      w.head = v
    else
      local idx = tonumber(f)
      if idx then
        w.c[idx] = v
        w.total = w.total + v
      end
    end
  end
  return w
end

local function advance(w, index, n)
  if index <= w.head then return end
  local low = index - n
  for idx, v in pairs(w.c) do
    if idx <= low then
      w.total = w.total - v
      w.c[idx] = nil
    end
  end
  w.head = index
end

local function next_release(w, width, n)
  if w.total == 0 then return 0 end
  local k = n - 1
  for j = w.head - k, w.head do
    local v = w.c[j]
    if v and v ~= 0 then
      return math.max(0, (j + k + 1) * width - now)
    end
  end
  return 0
end

local function write_window(key, w, n, width, extra)
  redis.call('DEL', key)
  local args = {}
  if w.head ~= NEG then
    args[#args + 1] = 'h'
    args[#args + 1] = fmt(w.head)
  end
  for idx, v in pairs(w.c) do
    args[#args + 1] = fmt(idx)
    args[#args + 1] = v
  end
  if extra then
    for i = 1, #extra do args[#args + 1] = extra[i] end
  end
  if #args > 0 then
    redis.call('HSET', key, unpack(args))
  end
end

-- ban bookkeeping: every change is numbered, so workers pick it up in their next reply
local function note_ban(key, keep)
  local seq = redis.call('INCR', KEYS[1])
  local recent = P .. 'recent'
  redis.call('ZADD', recent, seq, key)
  if seq % 64 == 0 then
    redis.call('ZREMRANGEBYRANK', recent, 0, -1025)
  end
  redis.call('PEXPIRE', KEYS[1], ttl_ms(keep))
  redis.call('PEXPIRE', recent, ttl_ms(keep))
end

local function ban_fields(key)
  local b = redis.call('HMGET', P .. 'b:' .. key, 'u', 'l', 'o', 'a', 'r')
  return b
end
"""

CHECKPOINT = (
    _COMMON
    + r"""
-- ARGV: 1 prefix, 2 now or '', 3 margin, 4 "enabled after strike-width strike-buckets
-- base factor max memory news-limit", 5 last seen ban change, 6 refresh the secret (ms,
-- 0: no), 7 packed fields: ban key count, ban keys..., then 6 per hit: key, "limit
-- width buckets window", cost, flags (1 consume, 2 enforce), subject or '', once or ''.
-- The reply is one string of \31-separated fields (see `RedisStore._decode`).
-- the settings are read only when needed (ban news, a refusal): not on most calls
local enabled, after, swidth, sbuckets, base, factor, bmax, memory, news_limit
local function configure()
  local conf = {}
  for word in string.gmatch(ARGV[4], '%S+') do conf[#conf + 1] = tonumber(word) end
  enabled = conf[1] == 1
  after, swidth, sbuckets = conf[2], conf[3], conf[4]
  base, factor, bmax, memory = conf[5], conf[6], conf[7], conf[8]
  news_limit = conf[9]
end
local last_seen = tonumber(ARGV[5])
local secret_ms = tonumber(ARGV[6])
-- ARGV[7]: the ban keys and hits, each field followed by \31 (one argument: packing
-- and parsing many small arguments costs more than the script's own work)
local F = {}
for field in string.gmatch(ARGV[7], '([^\31]*)\31') do F[#F + 1] = field end
local nbk = tonumber(F[1])

local out = {fmt(now), 'A', '0', '0', '0'}

-- the shared secret stays as long as the deployment runs
if secret_ms > 0 and redis.call('PEXPIRE', P .. 'secret', secret_ms) == 0 then
  out[4] = '1'
end

-- ban changes since this worker's last call (its local ban cache)
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
if seq < last_seen then last_seen = 0 end  -- the counter expired and restarted
local seen = seq
if seq > last_seen then
  configure()
  local changed = redis.call('ZRANGEBYSCORE', P .. 'recent', '(' .. fmt(last_seen), '+inf',
    'WITHSCORES', 'LIMIT', 0, news_limit)
  local count = 0
  for i = 1, #changed, 2 do
    local b = ban_fields(changed[i])
    out[#out + 1] = changed[i]
    for j = 1, 5 do out[#out + 1] = b[j] or '' end
    count = count + 1
  end
  if count == news_limit then seen = tonumber(changed[#changed]) end
  out[5] = tostring(count)
end
out[3] = fmt(seen)

local function duration(level)
  local exponent = 0
  if level > 1 then exponent = level - 1 end
  if exponent > 0 and factor > 1.0 then
    local reach = math.log(bmax / base) / math.log(factor)
    if exponent > reach then return bmax end
    return math.min(base * factor ^ exponent, bmax)
  end
  return math.min(base, bmax)
end

-- 1. bans
local pos = 2
for i = 1, nbk do
  local key = F[pos]
  pos = pos + 1
  local b = ban_fields(key)
  if b[1] then
    if tonumber(b[1]) > now then
      out[2] = 'B'
      out[#out + 1] = key
      for j = 1, 5 do out[#out + 1] = b[j] or '' end
      return table.concat(out, '\31')
    end
    redis.call('DEL', P .. 'b:' .. key)
  end
end

-- 2. windows
local nh = (#F - pos + 1) / 6
local windows = {}
local charged = {}
local marks = {}
local refused = false
local refused_subject = nil
local hits = {}
local specs = {}
for i = 1, nh do
  local key = F[pos]
  local sp = specs[F[pos + 1]]
  if sp == nil then
    sp = {}
    for word in string.gmatch(F[pos + 1], '%S+') do sp[#sp + 1] = tonumber(word) end
    specs[F[pos + 1]] = sp
  end
  local limit, width, n, window = sp[1], sp[2], sp[3] + 1, sp[4]
  local cost = tonumber(F[pos + 2])
  local nominal = cost
  local flags = tonumber(F[pos + 3])
  local subject = F[pos + 4]
  local once = F[pos + 5]
  pos = pos + 6
  local consume = flags % 2 == 1
  local enforce = flags >= 2
  local w = windows[key]
  if w == nil then
    local flat = redis.call('HGETALL', P .. 'w:' .. key)
    -- (every field in the constructor: a table sized once)
    w = {head = NEG, c = {}, total = 0, n = n, width = width, stored_head = false,
      pending = false, charged = false, added = false}
    if #flat > 0 then
      parse_window(flat, w)
      w.stored_head = w.head
      windows[key] = w
    elseif consume and cost > 0 then
      w.pending = true
      windows[key] = w
    end
  end
  local index = floordiv(now, width)
  if index > w.head then advance(w, index, n) end
  local head = w.head
  local total = w.total
  if once ~= '' then
    local exp = redis.call('GET', P .. 'm:' .. once)
    if exp then
      if tonumber(exp) > now then
        cost = 0
      else
        redis.call('DEL', P .. 'm:' .. once)
      end
    end
  end
  local h = {w = w, limit = limit, width = width, n = n, nominal = nominal,
    consume = consume, bucket = head, fits = 0, remaining = 0, reset = 0, retry = 0}
  hits[i] = h
  if total + cost <= limit then
    h.fits = 1
    if cost > 0 and consume and not refused then
      w.c[head] = (w.c[head] or 0) + cost
      total = total + cost
      w.total = total
      w.charged = true
      w.added = w.added or {}
      w.added[head] = (w.added[head] or 0) + cost
      charged[#charged + 1] = {w, head, cost}
      if once ~= '' then marks[#marks + 1] = {once, head, width, n} end
    end
    h.remaining = limit - total
    h.retry = 0
    if total == 0 then
      h.reset = 0
    else
      h.reset = 0
      for j = head - n + 1, head do
        local v = w.c[j]
        if v and v ~= 0 then
          h.reset = (j + n) * width - now
          break
        end
      end
    end
  else
    h.fits = 0
    if enforce then
      refused = true
      if refused_subject == nil and subject ~= '' then refused_subject = subject end
    end
    local remaining = limit - total
    if remaining < 0 then remaining = 0 end
    h.remaining = remaining
    h.reset = next_release(w, width, n)
    -- seconds till a request of `cost` fits
    if cost > limit then
      h.retry = window
    elseif total + cost <= limit then
      h.retry = 0
    else
      local left = total
      local k = n - 1
      h.retry = math.max(0, (head + k + 1) * width - now)
      for j = head - k, head do
        left = left - (w.c[j] or 0)
        if left + cost <= limit then
          h.retry = math.max(0, (j + k + 1) * width - now)
          break
        end
      end
    end
  end
end

local function emit_hits()
  for i = 1, nh do
    local h = hits[i]
    out[#out + 1] = h.fits
    out[#out + 1] = h.remaining
    out[#out + 1] = h.reset == 0 and 0 or fmt(h.reset)
    out[#out + 1] = h.retry == 0 and 0 or fmt(h.retry)
    out[#out + 1] = fmt(h.bucket)
  end
end

-- 3. admitted: keep what was charged
if not refused then
  for key, w in pairs(windows) do
    if w.charged and w.total > 0 then
      local rkey = P .. 'w:' .. key
      if w.stored_head == w.head then  -- the common case: same bucket as last time
        for idx, v in pairs(w.added) do redis.call('HINCRBY', rkey, fmt(idx), v) end
      else
        write_window(rkey, w, w.n, w.width, nil)
        redis.call('PEXPIRE', rkey, ttl_ms((w.head + w.n) * w.width - now))
      end
    end
  end
  for i = 1, #marks do
    local m = marks[i]
    local expires = (m[2] + m[4]) * m[3]
    redis.call('SET', P .. 'm:' .. m[1], fmt(expires), 'PX', ttl_ms(expires - now))
  end
  emit_hits()
  return table.concat(out, '\31')
end

-- refused: nothing is charged; report the rolled-back state
out[2] = 'R'
for i = 1, #charged do
  local c = charged[i]
  local w = c[1]
  w.c[c[2]] = w.c[c[2]] - c[3]
  w.total = w.total - c[3]
end
for i = 1, nh do
  local h = hits[i]
  if h.fits == 1 and h.consume and h.nominal > 0 then
    h.remaining = h.limit - h.w.total
    h.reset = next_release(h.w, h.width, h.n)
  end
end
emit_hits()

-- a strike against the refused subject; enough of them ban it
if refused_subject ~= nil and news_limit == nil then configure() end
if refused_subject ~= nil and enabled then
  local skey = P .. 's:' .. refused_subject
  local rec = {head = NEG, c = {}, total = 0}
  local level = 0
  local last_ban = NEG
  local flat = redis.call('HGETALL', skey)
  for i = 1, #flat, 2 do
    local f = flat[i]
    if f == 'lv' then
      level = tonumber(flat[i + 1])
    elseif f == 'lb' then
      last_ban = tonumber(flat[i + 1])
    end
  end
  parse_window(flat, rec)
  local sn = sbuckets + 1
  local index = floordiv(now, swidth)
  if index > rec.head then advance(rec, index, sn) end
  if rec.total + 1 <= after then
    rec.c[rec.head] = (rec.c[rec.head] or 0) + 1
    rec.total = rec.total + 1
  end
  local keep_until = (rec.head + sn) * swidth
  if rec.total < after then
    local extra = {'lv', level}
    if last_ban ~= NEG then
      extra[3] = 'lb'
      extra[4] = fmt(last_ban)
      keep_until = math.max(keep_until, last_ban + memory)
    end
    write_window(skey, rec, sn, swidth, extra)
    redis.call('PEXPIRE', skey, ttl_ms(keep_until - now))
    out[#out + 1] = '0'
    return table.concat(out, '\31')
  end
  if now - last_ban <= memory then level = level + 1 else level = 1 end
  local d = duration(level)
  last_ban = now + d
  redis.call('DEL', skey)
  redis.call('HSET', skey, 'lv', level, 'lb', fmt(last_ban))
  redis.call('PEXPIRE', skey, ttl_ms(last_ban + memory - now))
  local till = now + d
  local bkey = P .. 'b:' .. refused_subject
  redis.call('DEL', bkey)
  redis.call('HSET', bkey, 'u', fmt(till), 'l', level)
  redis.call('PEXPIRE', bkey, ttl_ms(d))
  note_ban(refused_subject, bmax)
  out[#out + 1] = '1'
  out[#out + 1] = refused_subject
  out[#out + 1] = fmt(till)
  out[#out + 1] = level
  return table.concat(out, '\31')
end
out[#out + 1] = '0'
return table.concat(out, '\31')
"""
)

AFTER = (
    _COMMON
    + r"""
-- What follows responses, for any number of requests, in one call. ARGV: 1 prefix,
-- 2 now or '', 3 margin, then operations, each a code and its values:
--   'N', now                                  (the callers' clock from here on)
--   'T', key, window, item or '', amount      (a detector tally)
--   'R', key, window, value                   (a detector stride run)
--   'F', window key, bucket, cost, buckets    (a refund)
--   'I', key, duration, level, owner, action, reason, keep   (impose a ban)
--   'L', key, keep                            (lift a ban)
-- Reply: now, then per tally its count, per run its length and stride.
local out = {fmt(now)}

local function tally(key, window, item, amount)
  local cur, old = key .. ':c', key .. ':o'
  local t = redis.call('HMGET', key, 's', 'c', 'o', 'h')
  local half = math.max(window / 2.0, 1e-6)
  local start, count, old_count = now, 0, 0
  if t[1] and (now - tonumber(t[1])) < 2 * tonumber(t[4]) then
    start, count, old_count, half = tonumber(t[1]), tonumber(t[2]), tonumber(t[3]), tonumber(t[4])
  else
    redis.call('DEL', cur, old)
  end
  local elapsed = now - start
  if elapsed >= half then
    if elapsed >= 2 * half then
      old_count = 0
      start = now
      redis.call('DEL', cur, old)
    else
      old_count = count
      start = start + half
      if redis.call('EXISTS', cur) == 1 then
        redis.call('RENAME', cur, old)
      else
        redis.call('DEL', old)
      end
    end
    count = 0
    elapsed = now - start
  end
  local weight = 1.0 - elapsed / half
  local result
  local keep = ttl_ms(2 * half)
  if item == '' and amount == 0 and (redis.call('EXISTS', cur) == 1
      or redis.call('EXISTS', old) == 1) then
    result = redis.call('PFCOUNT', cur, old)  -- a read of a distinct sketch
  elseif item == '' then
    count = count + amount
    result = count + old_count * weight
  else
    redis.call('PFADD', cur, item)
    redis.call('PEXPIRE', cur, keep)
    if redis.call('EXISTS', old) == 1 then
      redis.call('PEXPIRE', old, keep)
      result = redis.call('PFCOUNT', cur, old)
    else
      result = redis.call('PFCOUNT', cur)
    end
  end
  redis.call('HSET', key, 's', fmt(start), 'c', count, 'o', old_count, 'h', fmt(half))
  redis.call('PEXPIRE', key, keep)
  out[#out + 1] = fmt(result)
end

local function run(key, window, value)
  local r = redis.call('HMGET', key, 't', 'v', 's', 'n')
  local last, stride, length = nil, 0, 0
  if r[1] and now - tonumber(r[1]) < window then
    last, stride, length = tonumber(r[2]), tonumber(r[3]), tonumber(r[4])
  end
  local res_len, res_stride = 0, 0
  if last ~= nil then
    local step = value - last
    if step == 0 then
      res_len, res_stride = length, 0
    else
      if step == stride then length = length + 1 else stride, length = step, 1 end
      res_len, res_stride = length, step
    end
  end
  redis.call('HSET', key, 't', fmt(now), 'v', fmt(value), 's', fmt(stride), 'n', length)
  redis.call('PEXPIRE', key, ttl_ms(window))
  out[#out + 1] = fmt(res_len)
  out[#out + 1] = fmt(res_stride)
end

local function refund(key, bucket, cost, n)
  local head = tonumber(redis.call('HGET', key, 'h') or '')
  if head and cost > 0 and bucket <= head and bucket > head - n then
    local field = fmt(bucket)
    local have = tonumber(redis.call('HGET', key, field) or '0')
    local back = math.min(cost, have)
    if back > 0 then redis.call('HINCRBY', key, field, -back) end
  end
end

local function impose(key, d, level, owner, action, reason, keep)
  local till = now + d
  local bkey = P .. 'b:' .. key
  local current = redis.call('HGET', bkey, 'u')
  if current and tonumber(current) >= till then return end
  redis.call('DEL', bkey)
  local args = {'u', fmt(till), 'l', level}
  if owner ~= '' then args[#args + 1] = 'o'; args[#args + 1] = owner end
  if action ~= '' then args[#args + 1] = 'a'; args[#args + 1] = action end
  if reason ~= '' then args[#args + 1] = 'r'; args[#args + 1] = reason end
  redis.call('HSET', bkey, unpack(args))
  redis.call('PEXPIRE', bkey, ttl_ms(d))
  note_ban(key, keep)
end

local pos = 4
while ARGV[pos] do
  local op = ARGV[pos]
  if op == 'T' then
    tally(P .. 't:' .. ARGV[pos + 1], tonumber(ARGV[pos + 2]), ARGV[pos + 3],
      tonumber(ARGV[pos + 4]))
    pos = pos + 5
  elseif op == 'R' then
    run(P .. 'r:' .. ARGV[pos + 1], tonumber(ARGV[pos + 2]), tonumber(ARGV[pos + 3]))
    pos = pos + 4
  elseif op == 'F' then
    refund(P .. 'w:' .. ARGV[pos + 1], tonumber(ARGV[pos + 2]), tonumber(ARGV[pos + 3]),
      tonumber(ARGV[pos + 4]) + 1)
    pos = pos + 5
  elseif op == 'I' then
    impose(ARGV[pos + 1], tonumber(ARGV[pos + 2]), ARGV[pos + 3], ARGV[pos + 4],
      ARGV[pos + 5], ARGV[pos + 6], tonumber(ARGV[pos + 7]))
    pos = pos + 8
  elseif op == 'L' then
    if redis.call('DEL', P .. 'b:' .. ARGV[pos + 1]) == 1 then
      note_ban(ARGV[pos + 1], tonumber(ARGV[pos + 2]))
    end
    pos = pos + 3
  elseif op == 'N' then
    now = tonumber(ARGV[pos + 1])
    pos = pos + 2
  else
    return redis.error_reply('apiguard: unknown operation ' .. tostring(op))
  end
end
return out
"""
)
