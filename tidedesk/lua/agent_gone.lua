-- KEYS: agent, agent's presence. ARGV: updated_at (as read), since, now.
-- An agent whose node died: offline since ARGV[2], unless they are offline already, a node
-- updated them after ARGV[1], or a connection of theirs is live (then 0, nothing changed).
local a = redis.call('HMGET', KEYS[1], 'status', 'updated_at')
if not a[1] or a[1] == 'offline' then return 0 end
if tonumber(a[2] or '0') ~= tonumber(ARGV[1]) then return 0 end
local now = tonumber(ARGV[3])
local entries = redis.call('HVALS', KEYS[2])
for i = 1, #entries do
  local sep = string.find(entries[i], '|', 1, true)
  if tonumber(string.sub(entries[i], 1, sep - 1)) > now then return 0 end
end
redis.call('HSET', KEYS[1], 'status', 'offline', 'status_since', ARGV[2], 'lapsed_from', a[1])
return 1
