-- KEYS: counter. ARGV: floor, counter ttl ms. Keeps the largest value ever seen, even a stale one.
-- Runs after run_id.lua (RedisStore puts it in front), which sets the local run_id.
local n = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
local floor = tonumber(ARGV[1])
if floor > n then n = floor end
redis.call('HSET', KEYS[1], 'n', string.format('%d', n), 'epoch', run_id)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return n
