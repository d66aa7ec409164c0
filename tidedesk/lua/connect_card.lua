-- A connect's cache read and its presence in one round trip (issue 17, P1). RedisStore runs
-- this, then presence_add.lua (same KEYS[1] and ARGV[1..4]), then `return {value, 1}`.
-- KEYS: presence, kv. ARGV: conn, "<exp>|<node>", now, presence ttl ms, skip prefix.
-- kv_get.lua without the touch; a missing value, or one that starts with the skip prefix (a
-- lease is no answer), returns {value or false, 0} before any presence is added.
local item = redis.call('HMGET', KEYS[2], 'v', 'exp')
local value = item[1]
if value and tonumber(item[2]) <= tonumber(ARGV[3]) then
  redis.call('DEL', KEYS[2])
  value = false
end
if not value or string.sub(value, 1, #ARGV[5]) == ARGV[5] then
  return {value, 0}
end
