-- KEYS: presence. ARGV: conn, "<exp>|<node>", now, ttl ms. Drops expired connections on the way.
local all = redis.call('HGETALL', KEYS[1])
local now = tonumber(ARGV[3])
for i = 1, #all, 2 do
  local sep = string.find(all[i + 1], '|', 1, true)
  if tonumber(string.sub(all[i + 1], 1, sep - 1)) <= now then
    redis.call('HDEL', KEYS[1], all[i])
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[4]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
