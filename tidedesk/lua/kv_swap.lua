-- KEYS: kv. ARGV: now, expected ('' = missing), has_expected ('1'/'0'), value, expires_at, ttl ms.
local item = redis.call('HMGET', KEYS[1], 'v', 'exp')
local live = item[1] and tonumber(item[2]) > tonumber(ARGV[1])
if ARGV[3] == '1' then
  if not live or item[1] ~= ARGV[2] then return 0 end
elseif live then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[4], 'exp', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return 1
