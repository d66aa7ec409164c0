-- Whether any agent of these pools has one of these statuses, in one round trip (issue 17: a
-- new visitor's hello said `available` after SMEMBERS and a pipeline of HGETALLs per pool).
-- KEYS: the pools' member sets. ARGV: the key prefix of agents' hashes, then the statuses.
-- The agent keys are made here from the members: one Redis server, not a cluster.
for i = 1, #KEYS do
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[i])) do
    local status = redis.call('HGET', ARGV[1] .. id, 'status')
    if status then
      for j = 2, #ARGV do
        if status == ARGV[j] then return 1 end
      end
    end
  end
end
return 0
