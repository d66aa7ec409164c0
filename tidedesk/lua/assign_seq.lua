-- KEYS: counter, client id. ARGV: now, expires_at (string), client id ttl ms, counter ttl ms.
-- Runs after run_id.lua (RedisStore puts it in front), which sets the local run_id.
local known = redis.call('GET', KEYS[2])
if known then
  local sep = string.find(known, ':', 1, true)
  if tonumber(string.sub(known, sep + 1)) > tonumber(ARGV[1]) then
    return {tonumber(string.sub(known, 1, sep - 1)), 0}
  end
end
if redis.call('HGET', KEYS[1], 'epoch') ~= run_id then
  return false
end
local seq = redis.call('HINCRBY', KEYS[1], 'n', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('SET', KEYS[2], seq .. ':' .. ARGV[2], 'PX', ARGV[3])
return {seq, 1}
