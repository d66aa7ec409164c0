-- KEYS: kv. ARGV: now, touch ('' or new expires_at), touch ttl ms.
local item = redis.call('HMGET', KEYS[1], 'v', 'exp')
if not item[1] then return false end
if tonumber(item[2]) <= tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return false
end
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'exp', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return item[1]
