-- KEYS: owner, from agent, from agent's conversations, to agent, to agent's conversations.
-- ARGV: from id, to id, now, conv id. Returns 1 moved, 0 not the owner, -1 no room.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[1] == ARGV[2] then return -1 end
local a = redis.call('HMGET', KEYS[4], 'status', 'open_chats', 'max_chats')
if not a[1] or a[1] ~= 'online' then return -1 end
if tonumber(a[2] or '0') >= tonumber(a[3]) then return -1 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SREM', KEYS[3], ARGV[4])
local n = tonumber(redis.call('HGET', KEYS[2], 'open_chats') or '0')
if n > 0 then redis.call('HINCRBY', KEYS[2], 'open_chats', -1) end
redis.call('HINCRBY', KEYS[4], 'open_chats', 1)
redis.call('HSET', KEYS[4], 'last_assigned_at', ARGV[3])
redis.call('SADD', KEYS[5], ARGV[4])
return 1
