-- KEYS: history zset, owner, the visitor's presence hash, the conversation's counter hash.
-- ARGV: seq, message JSON, cap, ttl ms, '1' when the visitor is a recipient, the key prefix of
-- agents' presence hashes. Returns {owner or '', the visitor's presence entries, the owner's
-- presence entries}. The owner's key is made here from the owner read here: one Redis server
-- (or Sentinel primary), not a cluster. No counter (a closed conversation, whose memory was
-- forgotten, or a store that lost it): no history is kept, as in history_append.lua.
if redis.call('EXISTS', KEYS[4]) == 1 then
  if #redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[1], 'LIMIT', 0, 1) == 0 then
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
    redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[3]) + 1))
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
local owner = redis.call('GET', KEYS[2])
local visitor = {}
if ARGV[5] == '1' then visitor = redis.call('HVALS', KEYS[3]) end
local agent = {}
if owner then agent = redis.call('HVALS', ARGV[6] .. owner) end
return {owner or '', visitor, agent}
