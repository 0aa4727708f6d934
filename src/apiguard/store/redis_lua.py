"""The Lua scripts of `apiguard.store.redis`: one call per checkpoint, one per flush of
what follows responses (detector observations, refunds, bans imposed or lifted).

Every key lives under the deployment's prefix, which carries a Redis Cluster hash tag
(`{apiguard}:`): all of a deployment's keys sit in one slot, so no script can raise
CROSSSLOT, and `KEYS[1]` (the ban sequence key) routes the call. The checkpoint's keys
are built by the caller (`RedisStore._checkpoint_args`), the other scripts' from the
prefix.

The window arithmetic is `MemoryStore._execute`'s, statement for statement (bucket
indices are Python's float floor division; the checkpoint's numbers travel as doubles
packed with `struct`, the other scripts' as "%.17g" strings), so both stores answer the
same schedule alike (tests/test_redis_store.py holds them to it).

What a checkpoint costs Redis is what the scripts are written for (server instructions
counted under callgrind on replayed benchmark traffic; `benchmarks/redis.py` reports
Redis's CPU per request): a window is one MessagePack string read with the
ban counter in one MGET and written with one SET (its expiry kept while its newest
bucket does not move), its numbers are read and answered with one `struct` call each,
and nothing is formatted as text or parsed from text on the common path.

Key layout under the prefix P (every key expires):
  P w:<window>   string: MessagePack numbers newest bucket index, total, then the count
                 of each bucket from the newest back, the last not zero (a window written
                 by an earlier version, a hash, is read and rewritten)
  P m:<marker>   string: when the marked unit stops counting (a `once` marker)
  P s:<subject>  hash: strike window (h, buckets), lv = ban level, lb = end of last ban
  P b:<key>      hash: a ban: u = till, l = level, o = owner, a = action, r = reason
  P seq, P recent   ban change counter and (key -> change number) sorted set: workers
                 read the changes since their last call in every reply (local ban caches)
  P t:<key>, P t:<key>:c, P t:<key>:o   a detector tally (MessagePack string;
                 HyperLogLogs)
  P r:<key>      a detector stride run (MessagePack string)
  P secret       the shared keyed-hash secret (hex), refreshed by every checkpoint
"""

from __future__ import annotations

from apiguard.store.sketch import RUN_AGES, RUN_GAPS

_COMMON = r"""
local P, now, margin
local NEG = -math.huge

-- the script's clock: the caller's (`given`, a number), else the server's TIME
local function clock(given)
  if given ~= nil and given == given then return given end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function fmt(x)
  return string.format('%.17g', x)
end

local function ttl_ms(seconds)
  local ms = math.ceil((seconds + margin) * 1000)
  if ms < 1 then ms = 1 end
  return ms
end

-- A window's record (a string): MessagePack numbers head (the newest bucket's index), the
-- total, then the count of each bucket from the newest (age 0: bucket `head`) back (age
-- a: bucket head - a, a < n), the last one not zero. In the scripts a window is that
-- array, d = {head, total, count at age 0, ...}: no table keyed by bucket index, no sum
-- (a window costs one `cmsgpack` call each way).

-- a window's total (d[2]) from its buckets d[3..last], and its trailing empty buckets
-- dropped (the array ends at its oldest non-empty count)
local function retotal(d, last)
  local t = 0
  for j = 3, last do t = t + d[j] end
  d[2] = t
  while last > 2 and d[last] == 0 do
    d[last] = nil
    last = last - 1
  end
end

-- make bucket `index` (> d[1]) the newest of window d: every count ages by the
-- difference, those that reach n leave
local function advance(d, index, n)
  local shift = index - d[1]
  local len = #d
  d[1] = index
  if shift >= n or len == 2 then
    for j = len, 3, -1 do d[j] = nil end
    d[2] = 0
    return
  end
  local last = len + shift  -- where the oldest count goes
  if last > n + 2 then last = n + 2 end
  for j = len + 1, last do d[j] = 0 end  -- (grown in order: an array, no holes)
  for j = last, 3 + shift, -1 do d[j] = d[j - shift] end
  for j = 2 + shift, 3, -1 do d[j] = 0 end
  retotal(d, last)
end

local function decode(raw, n)
  local d = {cmsgpack.unpack(raw)}
  local last = #d
  if last > n + 2 then  -- (stored with more buckets: the older ones have left)
    for j = last, n + 3, -1 do d[j] = nil end
    retotal(d, n + 2)
  end
  return d
end

local function encode(d)
  return cmsgpack.pack(unpack(d))
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

-- the ban changes numbered after `last_seen` (the counter is at `seq`), at most `limit`:
-- each change's key and its five fields appended to `T`; returns the last change sent
-- (all of them: `seq`) and how many were sent
local function read_news(seq, last_seen, limit, T)
  local seen, count = seq, 0
  if seq > last_seen then
    local changed = redis.call('ZRANGEBYSCORE', P .. 'recent', '(' .. fmt(last_seen),
      '+inf', 'WITHSCORES', 'LIMIT', 0, limit)
    for i = 1, #changed, 2 do
      local b = redis.call('HMGET', P .. 'b:' .. changed[i], 'u', 'l', 'o', 'a', 'r')
      T[#T + 1] = changed[i]
      for j = 1, 5 do T[#T + 1] = b[j] or '' end
      count = count + 1
    end
    if count == limit then seen = tonumber(changed[#changed]) end
  end
  return seen, count
end
"""

CHECKPOINT = (
    _COMMON
    + r"""
-- ARGV: 1 prefix, 2 the ban settings "enabled after strike-width strike-buckets base
-- factor max memory news-limit" (read only when needed: ban news, a refusal), 3 the
-- `struct` format of ARGV[5], 4 the reply's, 5 numbers packed by `struct`: margin, last
-- ban change seen, refresh the secret (ms, 0: no), the caller's time (NaN: the server's),
-- ban key count, hit count, then per hit: limit, bucket width, buckets + 1, window, cost,
-- flags (1 consume, 2 enforce), the ARGV index of its subject and of its `once` marker's
-- key (0: none), and the number of the first hit with the same window key (0: this one);
-- then the ban keys (P b:<key>), the hits' window keys (P w:<key>), then subjects and
-- marker keys (P m:<marker>). A subject given as a ban key's index is that key without
-- its 'P b:'.
-- The reply: `struct`-packed numbers (now, status 0 admitted / 1 banned / 2 refused, last
-- ban change, 1 when the secret must be put back, ban news count, then per hit: fits,
-- remaining, reset, retry, bucket), then text fields each preceded by \31: the ban news
-- (6 fields each), then the ban (banned) or the strike's outcome (refused). Numbers travel
-- as doubles: nothing formatted, exact (see `RedisStore._decode`).
P = ARGV[1]
local N = {struct.unpack(ARGV[3], ARGV[5])}
margin = N[1]
local last_seen, secret_ms = N[2], N[3]
now = clock(N[4])
local nbk, nh = N[5], N[6]
local kb = 5 + nbk  -- ARGV index before the first window key
-- numbers per hit: 9, or 10 with quota leases (the 10th: the lease asked for; see the
-- grants below). (`struct.unpack` returns the next position after the values.)
local S = 9
if nh > 0 then S = (#N - 7) / nh end

-- the reply's numbers (sized for 8 hits: more grow it)
local R = {now, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
local T = {''}  -- the reply's text fields (each preceded by \31)
local function reply()
  return struct.pack(ARGV[4], unpack(R, 1, 5 + 5 * nh)) .. table.concat(T, '\31')
end

-- the settings are read only when needed (ban news, a refusal): not on most calls
local enabled, after, swidth, sbuckets, base, factor, bmax, memory, news_limit
local function configure()
  local conf = {}
  for word in string.gmatch(ARGV[2], '%S+') do conf[#conf + 1] = tonumber(word) end
  enabled = conf[1] == 1
  after, swidth, sbuckets = conf[2], conf[3], conf[4]
  base, factor, bmax, memory = conf[5], conf[6], conf[7], conf[8]
  news_limit = conf[9]
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

-- a window of an earlier version (a hash: h = newest bucket index, <index> = count)
local function legacy(flat, n)
  local head, c = NEG, {}
  for i = 1, #flat, 2 do
    local f = flat[i]
    if f == 'h' then
      head = tonumber(flat[i + 1])
    else
      local idx = tonumber(f)
      if idx then c[idx] = tonumber(flat[i + 1]) end
    end
  end
  local d = {head, 0}
  local t, last = 0, 2
  for a = 0, n - 1 do
    local v = c[head - a] or 0
    d[a + 3] = v
    t = t + v
    if v ~= 0 then last = a + 3 end
  end
  for j = n + 2, last + 1, -1 do d[j] = nil end
  d[2] = t
  return d
end

-- seconds until the oldest counted bucket of window d leaves it (0 when empty)
local function next_release(d, width, n)
  for j = #d, 3, -1 do
    if d[j] ~= 0 then
      return math.max(0, (d[1] - (j - 3) + n) * width - now)
    end
  end
  return 0
end

-- the shared secret stays as long as the deployment runs
if secret_ms > 0 and redis.call('PEXPIRE', P .. 'secret', secret_ms) == 0 then
  R[4] = 1
end

local banned = nbk > 0 and redis.call('EXISTS', unpack(ARGV, 6, kb)) > 0
-- the ban change counter and every window in one call (false: missing, or not a string)
local got = redis.call('MGET', KEYS[1], unpack(ARGV, kb + 1, kb + nh))

-- ban changes since this worker's last call (its local ban cache)
local seq = tonumber(got[1] or '0')
if seq < last_seen then last_seen = 0 end  -- the counter expired and restarted
if seq > last_seen then configure() end
local seen
seen, R[5] = read_news(seq, last_seen, news_limit, T)
R[3] = seen

-- 1. bans
if banned then
  for i = 6, kb do
    local bkey = ARGV[i]
    local b = redis.call('HMGET', bkey, 'u', 'l', 'o', 'a', 'r')
    if b[1] then
      if tonumber(b[1]) > now then
        R[2] = 1
        for j = 1, 5 * nh do R[5 + j] = 0 end
        T[#T + 1] = string.sub(bkey, #P + 3)
        for j = 1, 5 do T[#T + 1] = b[j] or '' end
        return reply()
      end
      redis.call('DEL', bkey)
    end
  end
end

-- 2. windows. Per hit: its window's array d (see `decode`; a key seen earlier in the
-- batch shares the first hit's), and, per window (at its first hit), the newest bucket
-- it was stored with (false: not stored in this format) and whether it was charged.
-- (Tables sized once: growing one costs more than the work done with it.)
local HD = {false, false, false, false, false, false, false, false}
local STORED = {false, false, false, false, false, false, false, false}
local CHARGED = {false, false, false, false, false, false, false, false}
local CH = {false, false, false, false, false, false, false, false}  -- cost charged
local marks = {}
local refused = false
local refused_subject = nil
local lw, li  -- the last bucket width and the index of now's bucket in it
local pos = 7  -- N index of the hit's numbers
local r = 5  -- R index before the hit's results
for i = 1, nh do
  local limit, width, n = N[pos], N[pos + 1], N[pos + 2]
  local cost, flags, oi, first = N[pos + 4], N[pos + 5], N[pos + 7], N[pos + 8]
  local d
  if first == 0 then
    first = i
    local raw = got[i + 1]
    if raw then
      d = decode(raw, n)
      STORED[i] = d[1]
    else
      -- missing, or a window of an earlier version (a hash)
      local flat = redis.call('HGETALL', ARGV[kb + i])
      if #flat > 0 then d = legacy(flat, n) else d = {NEG, 0} end
    end
  else
    d = HD[first]
  end
  HD[i] = d
  if width ~= lw then
    lw = width
    li = floordiv(now, width)
  end
  if li > d[1] then advance(d, li, n) end
  local head = d[1]
  local total = d[2]
  if oi > 0 then
    local exp = redis.call('GET', ARGV[oi])
    if exp then
      if tonumber(exp) > now then
        cost = 0
      else
        redis.call('DEL', ARGV[oi])
      end
    end
  end
  if total + cost <= limit then
    R[r + 1] = 1
    if cost > 0 and flags % 2 == 1 and not refused then
      d[3] = (d[3] or 0) + cost
      total = total + cost
      d[2] = total
      CH[i] = cost
      CHARGED[first] = true
      if oi > 0 then
        marks[#marks + 1] = ARGV[oi]
        marks[#marks + 1] = (head + n) * width
      end
    end
    R[r + 2] = limit - total
    if total ~= 0 then  -- the oldest counted bucket is the last (never a zero)
      R[r + 3] = (head - (#d - 3) + n) * width - now
    else
      R[r + 3] = 0
    end
    R[r + 4] = 0
  else
    R[r + 1] = 0
    local si = N[pos + 6]
    if flags >= 2 then
      refused = true
      if refused_subject == nil and si > 0 then
        refused_subject = ARGV[si]
        if si <= kb then refused_subject = string.sub(refused_subject, #P + 3) end
      end
    end
    local remaining = limit - total
    if remaining < 0 then remaining = 0 end
    R[r + 2] = remaining
    R[r + 3] = next_release(d, width, n)
    -- seconds till a request of `cost` fits
    local retry
    if cost > limit then
      retry = N[pos + 3]  -- the window
    elseif total + cost <= limit then
      retry = 0
    else
      local left = total
      local k1 = n - 1
      retry = math.max(0, (head + k1 + 1) * width - now)
      for j = head - k1, head do
        left = left - (d[head - j + 3] or 0)
        if left + cost <= limit then
          retry = math.max(0, (j + k1 + 1) * width - now)
          break
        end
      end
    end
    R[r + 4] = retry
  end
  R[r + 5] = head
  pos = pos + S
  r = r + 5
end

-- 3. admitted: keep what was charged (a window in the bucket it was stored in keeps its
-- expiry; one that moved on expires when its newest bucket stops counting)
if not refused then
  -- quota leases: hit i asked for a lease of N[pos + 9] more units of its window; it is
  -- granted at most a quarter of the window's headroom (none when fewer than 4 units
  -- are left: the tail of a limit is charged one request at a time), charged now into
  -- the current bucket as if used now. The caller admits from it only within this
  -- bucket, so every unit it admits is counted exactly where a synchronous charge at its
  -- use would have counted it; what it does not use it gives back ('F').
  -- The reply's `fits` is then 1 + the units granted.
  if S == 10 then
    pos = 7
    r = 5
    for i = 1, nh do
      local g = N[pos + 9]
      if g > 0 and CH[i] then
        local d = HD[i]
        local room = math.floor((N[pos] - d[2]) / 4)
        if g > room then g = room end
        if g > 0 then
          d[3] = d[3] + g
          d[2] = d[2] + g
          R[r + 1] = 1 + g
        end
      end
      pos = pos + 10
      r = r + 5
    end
  end
  pos = 7
  for i = 1, nh do
    if CHARGED[i] then
      local d = HD[i]
      if STORED[i] == d[1] then  -- the common case: same bucket as last time
        redis.call('SET', ARGV[kb + i], encode(d), 'KEEPTTL')
      else
        redis.call('SET', ARGV[kb + i], encode(d), 'PX',
          ttl_ms((d[1] + N[pos + 2]) * N[pos + 1] - now))
      end
    end
    pos = pos + S
  end
  for i = 1, #marks, 2 do
    local expires = marks[i + 1]
    redis.call('SET', marks[i], fmt(expires), 'PX', ttl_ms(expires - now))
  end
  return reply()
end

-- refused: nothing is charged; report the rolled-back state
R[2] = 2
for i = 1, nh do
  local c = CH[i]
  if c then
    local d = HD[i]
    d[3] = d[3] - c
    d[2] = d[2] - c
  end
end
pos = 7
r = 5
for i = 1, nh do
  if R[r + 1] == 1 and N[pos + 5] % 2 == 1 and N[pos + 4] > 0 then
    local d = HD[i]
    R[r + 2] = N[pos] - d[2]
    R[r + 3] = next_release(d, N[pos + 1], N[pos + 2])
  end
  pos = pos + S
  r = r + 5
end

-- a strike against the refused subject; enough of them ban it
if refused_subject ~= nil and news_limit == nil then configure() end
if refused_subject ~= nil and enabled then
  local skey = P .. 's:' .. refused_subject
  -- the strike record: a hash (h = newest bucket index, <index> = count, lv, lb)
  local head, c, total = NEG, {}, 0
  local level = 0
  local last_ban = NEG
  local flat = redis.call('HGETALL', skey)
  for i = 1, #flat, 2 do
    local f = flat[i]
    local v = tonumber(flat[i + 1])
    if f == 'lv' then
      level = v
    elseif f == 'lb' then
      last_ban = v
    elseif f == 'h' then
      head = v
    else
      local idx = tonumber(f)
      if idx then
        c[idx] = v
        total = total + v
      end
    end
  end
  local sn = sbuckets + 1
  local index = floordiv(now, swidth)
  if index > head then
    for idx, v in pairs(c) do
      if idx <= index - sn then
        total = total - v
        c[idx] = nil
      end
    end
    head = index
  end
  if total + 1 <= after then
    c[head] = (c[head] or 0) + 1
    total = total + 1
  end
  local keep_until = (head + sn) * swidth
  if total < after then
    local args = {'h', fmt(head), 'lv', level}
    if last_ban ~= NEG then
      args[5] = 'lb'
      args[6] = fmt(last_ban)
      keep_until = math.max(keep_until, last_ban + memory)
    end
    for idx, v in pairs(c) do
      args[#args + 1] = fmt(idx)
      args[#args + 1] = v
    end
    redis.call('DEL', skey)
    redis.call('HSET', skey, unpack(args))
    redis.call('PEXPIRE', skey, ttl_ms(keep_until - now))
    T[#T + 1] = '0'
    return reply()
  end
  if now - last_ban <= memory then level = level + 1 else level = 1 end
  local exponent = 0
  if level > 1 then exponent = level - 1 end
  local d
  if exponent > 0 and factor > 1.0 then
    local reach = math.log(bmax / base) / math.log(factor)
    if exponent > reach then
      d = bmax
    else
      d = math.min(base * factor ^ exponent, bmax)
    end
  else
    d = math.min(base, bmax)
  end
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
  T[#T + 1] = '1'
  T[#T + 1] = refused_subject
  T[#T + 1] = fmt(till)
  T[#T + 1] = level
  return reply()
end
T[#T + 1] = '0'
return reply()
"""
)

AFTER = (
    _COMMON
    + f"local RUN_GAPS = {RUN_GAPS}\n"
    + f"local RUN_AGES = {RUN_AGES}\n"
    + r"""
-- What follows responses, for any number of requests, in one call. ARGV: 1 prefix,
-- 2 now or '', 3 margin, then operations, each a code and its values:
--   'N', now                                  (the callers' clock from here on)
--   'T', P t:<key>, window, item or '', amount    (a detector tally; 'A': aligned)
--   'R', P r:<key>, window, value                 (a detector stride run)
--   'F', window key, bucket, cost, buckets    (a refund)
--   'C', window key, bucket, cost, buckets, width   (a charge into a given bucket)
--   'I', key, duration, level, owner, action, reason, keep   (impose a ban)
--   'L', key, keep                            (lift a ban)
--   'S', last ban change seen, most changes to send   (ban news, as a checkpoint's)
-- Reply: doubles packed by `struct`: now, the number of doubles, then per tally its
-- count, per run its length and stride, per 'S' the last change sent and their number;
-- then the news' text fields (6 a ban, as the checkpoint's), each preceded by \31.
P = ARGV[1]
now = clock(tonumber(ARGV[2]))
margin = tonumber(ARGV[3])
local out = {now, 0}
local T = {''}

-- the ban changes after `last_seen` (a worker admitting from leases learns bans with
-- the writes that follow its responses)
local function news(last_seen, limit)
  local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
  if seq < last_seen then last_seen = 0 end  -- the counter expired and restarted
  local seen, count = read_news(seq, last_seen, limit, T)
  out[#out + 1] = seen
  out[#out + 1] = count
end

-- A tally's record (a string): MessagePack start, count, old count, half window, and
-- flags: 1 its current HyperLogLog (key:c) exists, 2 its previous one (key:o) does. A
-- generation's keys are useless once it is two half windows old (the next call starts
-- afresh), so they expire then: the record and key:c when the generation starts (key:c
-- when first written), key:o keeps key:c's expiry when renamed. Within a generation an
-- item costs one PFADD and one PFCOUNT, a count one SET.
local function tally(key, window, item, amount, aligned)
  local cur = key .. ':c'  -- (and key .. ':o', made where needed)
  local raw = redis.pcall('GET', key)
  local start, count, old_count, half, flags
  local renew = false  -- a new generation (or record): its expiry is set
  if type(raw) == 'string' then
    start, count, old_count, half, flags = cmsgpack.unpack(raw)
  elseif type(raw) == 'table' then  -- a tally of an earlier version (a hash)
    local t = redis.call('HMGET', key, 's', 'c', 'o', 'h')
    if t[1] then
      start, count, old_count, half = tonumber(t[1]), tonumber(t[2]), tonumber(t[3]),
        tonumber(t[4])
      local old = key .. ':o'
      flags = redis.call('EXISTS', cur) + 2 * redis.call('EXISTS', old)
      if flags % 2 == 1 then redis.call('PEXPIRE', cur, ttl_ms(start + 2 * half - now)) end
      if flags >= 2 then redis.call('PEXPIRE', old, ttl_ms(start + half - now)) end
    end
    redis.call('DEL', key)
    renew = true
  end
  if start == nil or not ((now - start) < 2 * half) then
    half = math.max(window / 2.0, 1e-6)
    start, count, old_count, flags = now, 0, 0, 0
    if aligned then start = math.floor(now / half) * half end  -- (`generation_start`)
    redis.call('DEL', cur, key .. ':o')
    renew = true
  end
  local changed = renew
  local elapsed = now - start
  if elapsed >= half then
    if elapsed >= 2 * half then
      old_count = 0
      start = now
      if aligned then start = math.floor(now / half) * half end
      redis.call('DEL', cur, key .. ':o')
      flags = 0
    else
      old_count = count
      start = start + half
      if flags % 2 == 1 then
        redis.call('RENAME', cur, key .. ':o')  -- (keeps its expiry: its end of use as old)
        flags = 2
      else
        if flags >= 2 then redis.call('DEL', key .. ':o') end
        flags = 0
      end
    end
    count = 0
    elapsed = now - start
    renew = true
    changed = true
  end
  local weight = 1.0 - elapsed / half
  local result
  if item == '' and amount == 0 and flags > 0 then
    -- a read of a distinct sketch
    if flags >= 2 then result = redis.call('PFCOUNT', cur, key .. ':o')
    else result = redis.call('PFCOUNT', cur) end
  elseif item == '' then
    if amount ~= 0 then
      count = count + amount
      changed = true
    end
    result = count + old_count * weight
  else
    redis.call('PFADD', cur, item)
    if flags % 2 == 0 then
      redis.call('PEXPIRE', cur, ttl_ms(start + 2 * half - now))
      flags = flags + 1
      changed = true
    end
    if flags >= 2 then result = redis.call('PFCOUNT', cur, key .. ':o')
    else result = redis.call('PFCOUNT', cur) end
  end
  if changed then
    local rec = cmsgpack.pack(start, count, old_count, half, flags)
    if renew then
      redis.call('SET', key, rec, 'PX', ttl_ms(start + 2 * half - now))
    else
      redis.call('SET', key, rec, 'KEEPTTL')
    end
  end
  out[#out + 1] = result
end

-- A run's record (a string): MessagePack time of the last value, the value, the stride,
-- the run's length, the run's own last value, the values off it since then and the step
-- to the last of them, and the held run's last value, stride, length and age (none in a
-- record of an earlier version); forgotten `window` seconds after its last use.
-- `Stride.step` in Lua: up to RUN_GAPS values off the run are outlasted, unless two equal
-- steps among them start a run of their own; the run replaced is held unless shorter than
-- the held one's length halved per age, and goes on (the two swapping) at a value that
-- continues it.
-- The held run after the current one (`anchor`, `stride`, `length`) is replaced.
local function hold(anchor, stride, length, ha, hs, hn, hg)
  if length >= math.floor(hn / 2 ^ hg) then return anchor, stride, length, 0 end
  if hg < RUN_AGES then hg = hg + 1 end
  return ha, hs, hn, hg
end

local function run(key, window, value)
  local raw = redis.pcall('GET', key)
  local t, last, stride, length, anchor, misses, off, ha, hs, hn, hg
  if type(raw) == 'string' then
    t, last, stride, length, anchor, misses, off, ha, hs, hn, hg = cmsgpack.unpack(raw)
  elseif type(raw) == 'table' then  -- a run of an earlier version (a hash)
    local r = redis.call('HMGET', key, 't', 'v', 's', 'n')
    if r[1] then
      t, last, stride, length = tonumber(r[1]), tonumber(r[2]), tonumber(r[3]),
        tonumber(r[4])
    end
  end
  if t == nil or not (now - t < window) then
    last, stride, length, anchor, hn = nil, 0, 0, nil, 0
  end
  if anchor == nil then anchor, misses, off = last, 0, 0 end
  if hn == nil then ha, hs, hn = 0, 0, 0 end
  if hg == nil then hg = 0 end
  local res_len, res_stride = 0, 0
  local step = last and value - last
  if last == nil then
    anchor = value
  elseif value == last or value == anchor then
    res_len = length  -- a repeat neither extends nor breaks a walk
  elseif stride ~= 0 and value - anchor == stride then
    length, anchor, misses, off = length + 1, value, 0, 0
    res_len, res_stride = length, stride
  elseif stride ~= 0 and hn > 0 and value - ha == hs then  -- the held run goes on
    ha, hs, hn, anchor, stride, length = anchor, stride, length, value, hs, hn + 1
    misses, off, hg = 0, 0, 0
    res_len, res_stride = length, stride
  elseif stride ~= 0 and misses > 0 and step == off then
    ha, hs, hn, hg = hold(anchor, stride, length, ha, hs, hn, hg)
    stride, length, anchor, misses, off = step, 2, value, 0, 0
    res_len, res_stride = 2, step
  elseif stride ~= 0 and misses < RUN_GAPS then
    misses, off = misses + 1, step
    res_len = length
  else
    if stride ~= 0 then ha, hs, hn, hg = hold(anchor, stride, length, ha, hs, hn, hg) end
    stride, length, anchor, misses, off = step, 1, value, 0, 0
    res_len, res_stride = 1, step
  end
  redis.call('SET', key,
    cmsgpack.pack(now, value, stride, length, anchor, misses, off, ha, hs, hn, hg),
    'PX', ttl_ms(window))
  out[#out + 1] = res_len
  out[#out + 1] = res_stride
end

local function refund(key, bucket, cost, n)
  if cost <= 0 then return end
  local raw = redis.call('MGET', key)[1]
  if raw then
    local d = decode(raw, n)
    local j = d[1] - bucket + 3  -- the bucket's place in the window (age + 3)
    local have = d[j]
    if j >= 3 and have then
      local back = math.min(cost, have)
      if back > 0 then
        d[j] = have - back
        d[2] = d[2] - back
        local last = #d
        while last > 2 and d[last] == 0 do
          d[last] = nil
          last = last - 1
        end
        redis.call('SET', key, encode(d), 'KEEPTTL')
      end
    end
    return
  end
  -- a window of an earlier version (a hash: h, <bucket index> = count)
  local head = tonumber(redis.call('HGET', key, 'h') or '')
  if head and bucket <= head and bucket > head - n then
    local field = fmt(bucket)
    local have = tonumber(redis.call('HGET', key, field) or '0')
    local back = math.min(cost, have)
    if back > 0 then redis.call('HINCRBY', key, field, -back) end
  end
end

-- a charge made after the response into the bucket its request was admitted in (a
-- window covered by another, `apiguard.store.redis_cover`); dropped once that bucket has
-- left the window (it counts no more), or on a window of an earlier version (a hash)
local function charge(key, bucket, cost, n, width)
  if cost <= 0 or (bucket + n) * width <= now then return end
  local raw = redis.call('MGET', key)[1]
  local d
  if raw then
    d = decode(raw, n)
  elseif redis.call('EXISTS', key) == 1 then
    return
  else
    d = {NEG, 0}
  end
  local head = d[1]
  if bucket > head then advance(d, bucket, n) end
  local j = d[1] - bucket + 3  -- the bucket's place in the window (age + 3)
  if j > n + 2 then return end
  for k = #d + 1, j do d[k] = 0 end  -- (grown in order: an array, no holes)
  d[j] = d[j] + cost
  d[2] = d[2] + cost
  if d[1] == head then
    redis.call('SET', key, encode(d), 'KEEPTTL')
  else
    redis.call('SET', key, encode(d), 'PX', ttl_ms((d[1] + n) * width - now))
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
  if op == 'T' or op == 'A' then
    tally(ARGV[pos + 1], tonumber(ARGV[pos + 2]), ARGV[pos + 3], tonumber(ARGV[pos + 4]),
      op == 'A')
    pos = pos + 5
  elseif op == 'R' then
    run(ARGV[pos + 1], tonumber(ARGV[pos + 2]), tonumber(ARGV[pos + 3]))
    pos = pos + 4
  elseif op == 'F' then
    refund(P .. 'w:' .. ARGV[pos + 1], tonumber(ARGV[pos + 2]), tonumber(ARGV[pos + 3]),
      tonumber(ARGV[pos + 4]) + 1)
    pos = pos + 5
  elseif op == 'C' then
    charge(P .. 'w:' .. ARGV[pos + 1], tonumber(ARGV[pos + 2]), tonumber(ARGV[pos + 3]),
      tonumber(ARGV[pos + 4]) + 1, tonumber(ARGV[pos + 5]))
    pos = pos + 6
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
  elseif op == 'S' then
    news(tonumber(ARGV[pos + 1]), tonumber(ARGV[pos + 2]))
    pos = pos + 3
  else
    return redis.error_reply('apiguard: unknown operation ' .. tostring(op))
  end
end
out[2] = #out
return struct.pack('<' .. string.rep('d', #out), unpack(out)) .. table.concat(T, '\31')
"""
)
