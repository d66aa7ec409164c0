-- The Redis process's identity; it changes on every restart and on failover. Put in front of
-- the scripts that read or write a counter's epoch (they use the local run_id).
local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
