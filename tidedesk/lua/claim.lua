-- KEYS: owner, agent, agent's conversations. ARGV: agent id, now, conv id.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local a = redis.call('HMGET', KEYS[2], 'status', 'open_chats', 'max_chats')
if not a[1] or a[1] ~= 'online' then return 0 end
if tonumber(a[2]) >= tonumber(a[3]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HINCRBY', KEYS[2], 'open_chats', 1)
redis.call('HSET', KEYS[2], 'last_assigned_at', ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
return 1
