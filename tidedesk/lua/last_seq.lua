-- KEYS: counter.
-- Runs after run_id.lua (RedisStore puts it in front), which sets the local run_id.
local c = redis.call('HMGET', KEYS[1], 'n', 'epoch')
if c[2] ~= run_id then return false end
return tonumber(c[1])
