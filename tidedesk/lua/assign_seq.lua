-- KEYS: counter hash, the conversation's client-id zset (member client id, score seq), its
-- filter (a Bloom filter of every client id since its counter was 0: ARGV[8] bits, 4 a client id).
-- ARGV: client id, now, window secs, cap, client-id ttl ms, counter ttl ms, '1' when the caller
-- already looked the id up in the database, filter bits (a power of two up to 65536).
-- Returns {seq, 0} for a remembered id, {seq, 1} for a new seq, {0, 2} when the memory may have
-- forgotten the id (ask the database, then call again with ARGV[7] = '1'), false when the
-- counter is unknown. Runs after run_id.lua (RedisStore puts it in front).
--
-- The filter exists only while it holds every id the conversation took: it is made with the
-- first seq and dropped with the zset (quiet window, close). An id the zset has forgotten but
-- the filter may hold goes to the database; one the filter lacks is certainly new, so a long
-- conversation pays no database read per message. Without the filter (a counter re-seeded
-- above 0, an old conversation) the 'forgot' flag decides, as before.
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'n', 'at', 'forgot')
local now = tonumber(ARGV[2])
local forgot = meta[4] == '1'
if meta[3] and now > tonumber(meta[3]) + tonumber(ARGV[3]) then
  -- Nobody wrote for the whole window: its ids are forgotten (the database remembers them).
  redis.call('DEL', KEYS[2], KEYS[3])
  forgot = true
end
local known = redis.call('ZSCORE', KEYS[2], ARGV[1])
if known then
  return {tonumber(known), 0}
end
if meta[1] ~= run_id then
  return false
end
local n = tonumber(meta[2] or '0')
local size = redis.call('ZCARD', KEYS[2])
if size == 0 and n > 0 then
  forgot = true  -- seeded above 0 (the store lost it), expired or dropped on close
end
local filtered = n == 0 or redis.call('EXISTS', KEYS[3]) == 1
local bits = {}
if filtered then
  local h = redis.sha1hex(ARGV[1])
  local m = tonumber(ARGV[8])
  local maybe = true
  for i = 0, 3 do
    bits[i + 1] = tonumber(string.sub(h, 4 * i + 1, 4 * i + 4), 16) % m
    if maybe and n > 0 and redis.call('GETBIT', KEYS[3], bits[i + 1]) == 0 then
      maybe = false
    end
  end
  if n > 0 and maybe and ARGV[7] ~= '1' then
    return {0, 2}
  end
elseif forgot and ARGV[7] ~= '1' then
  return {0, 2}
end
local seq = redis.call('HINCRBY', KEYS[1], 'n', 1)
redis.call('ZADD', KEYS[2], seq, ARGV[1])
if size + 1 > tonumber(ARGV[4]) then
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, size - tonumber(ARGV[4]))
  forgot = true
end
if filtered then
  for i = 1, 4 do
    redis.call('SETBIT', KEYS[3], bits[i], 1)
  end
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
end
redis.call('HSET', KEYS[1], 'at', ARGV[2], 'forgot', forgot and '1' or '0')
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return {seq, 1}
