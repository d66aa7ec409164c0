-- KEYS: kv. ARGV: now, expires_at if new, ttl ms if new. A fixed window: expiry set once.
local item = redis.call('HMGET', KEYS[1], 'v', 'exp')
if not item[1] or tonumber(item[2]) <= tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'v', '1', 'exp', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
return redis.call('HINCRBY', KEYS[1], 'v', 1)
