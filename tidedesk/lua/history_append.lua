-- KEYS: history zset, the conversation's counter hash. ARGV: seq, message JSON, cap, ttl ms.
-- No counter: the conversation closed (its memory was forgotten) or the store lost it; the
-- message goes to the database only, and a resume reads it from there.
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
if #redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[1], 'LIMIT', 0, 1) > 0 then return 0 end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[3]) + 1))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
