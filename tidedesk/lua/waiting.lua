-- KEYS: vip zset, std zset, enqueued_at hash. Returns conv, enqueued_at, conv, ...
local out = {}
for k = 1, 2 do
  for _, conv in ipairs(redis.call('ZRANGE', KEYS[k], 0, -1)) do
    out[#out + 1] = conv
    out[#out + 1] = redis.call('HGET', KEYS[3], conv) or '0'
  end
end
return out
