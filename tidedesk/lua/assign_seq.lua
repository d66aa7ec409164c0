-- KEYS: counter hash, the conversation's client-id zset (member client id, score seq).
-- ARGV: client id, now, window secs, cap, client-id ttl ms, counter ttl ms, '1' when the caller
-- already looked the id up in the database.
-- Returns {seq, 0} for a remembered id, {seq, 1} for a new seq, {0, 2} when the memory may have
-- forgotten the id (ask the database, then call again with ARGV[7] = '1'), false when the
-- counter is unknown. Runs after run_id.lua (RedisStore puts it in front).
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'n', 'at', 'forgot')
local now = tonumber(ARGV[2])
local forgot = meta[4] == '1'
if meta[3] and now > tonumber(meta[3]) + tonumber(ARGV[3]) then
  -- Nobody wrote for the whole window: its ids are forgotten (the database remembers them).
  redis.call('DEL', KEYS[2])
  forgot = true
end
local known = redis.call('ZSCORE', KEYS[2], ARGV[1])
if known then
  return {tonumber(known), 0}
end
if meta[1] ~= run_id then
  return false
end
local size = redis.call('ZCARD', KEYS[2])
if size == 0 and tonumber(meta[2] or '0') > 0 then
  forgot = true  -- seeded above 0 (the store lost it), expired or dropped on close
end
if forgot and ARGV[7] ~= '1' then
  return {0, 2}
end
local seq = redis.call('HINCRBY', KEYS[1], 'n', 1)
redis.call('ZADD', KEYS[2], seq, ARGV[1])
if size + 1 > tonumber(ARGV[4]) then
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, size - tonumber(ARGV[4]))
  forgot = true
end
redis.call('HSET', KEYS[1], 'at', ARGV[2], 'forgot', forgot and '1' or '0')
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return {seq, 1}
