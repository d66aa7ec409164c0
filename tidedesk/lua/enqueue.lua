-- KEYS: vip zset, std zset, enqueued_at hash, counter. ARGV: conv, vip ('1'/'0'), now.
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  return 0
end
local n = redis.call('INCR', KEYS[4])
if ARGV[2] == '1' then
  redis.call('ZADD', KEYS[1], n, ARGV[1])
else
  redis.call('ZADD', KEYS[2], n, ARGV[1])
end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
return 1
