-- KEYS: owner, from agent, from agent's conversations, vip zset, std zset, enqueued_at hash,
-- counter. ARGV: from id, conv id, now. Frees the owner's slot and queues the chat ahead of
-- every VIP (score below any arrival counter; FIFO among given-back chats). 1 done, 0 not owner.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[3], ARGV[2])
local n = tonumber(redis.call('HGET', KEYS[2], 'open_chats') or '0')
if n > 0 then redis.call('HINCRBY', KEYS[2], 'open_chats', -1) end
redis.call('ZREM', KEYS[5], ARGV[2])
local c = redis.call('INCR', KEYS[7])
redis.call('ZADD', KEYS[4], c - 1e15, ARGV[2])
redis.call('HSET', KEYS[6], ARGV[2], ARGV[3])
return 1
