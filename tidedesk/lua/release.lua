-- KEYS: owner, agent, agent's conversations. ARGV: expected owner, conv id.
-- Compare-and-delete: the caller read the owner to know which agent keys to name.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[3], ARGV[2])
local n = tonumber(redis.call('HGET', KEYS[2], 'open_chats') or '0')
if n > 0 then redis.call('HINCRBY', KEYS[2], 'open_chats', -1) end
return 1
