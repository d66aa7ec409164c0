-- A visitor's connection closed, in one round trip (issue 17, P1): presence_remove.lua, and when
-- it was the last connection, kv_set.lua of the "gone" key (the idle close counts from it).
-- KEYS: presence, kv. ARGV: conn, value, expires_at, ttl ms. Returns the connections left.
redis.call('HDEL', KEYS[1], ARGV[1])
local left = redis.call('HLEN', KEYS[1])
if left == 0 then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2], 'v', ARGV[2], 'exp', ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
return left
