-- Decides a batch of rate-limit asks, each key once: an exact sliding
-- window per key, shared by every api instance (api/src/ratelimit.rs).
--
-- KEYS[1]   the batch's answer, kept for a while: a batch retried after its
--           answer was lost (the connection failed) is answered again, not
--           spent twice.
-- KEYS[i+1] key i's accepted requests in its window: their times in Unix
--           milliseconds, newest first (a list; absent when none).
-- ARGV[1]   the window in milliseconds.
-- ARGV[2]   how long the batch's answer is kept, in milliseconds.
-- ARGV[2i+1], ARGV[2i+2]
--           key i's limit and how many of the batch's requests spend quota.
--
-- Returns the clock (Unix ms), then for each key: its room before the batch
-- (limit minus its requests still in the window, at least 0), and, should
-- the batch leave it no room, how long until a request is next free (ms).
--
-- A script runs alone, so the whole batch is decided against one clock
-- (the server's) and no other instance's batch interleaves with it. The
-- lists stay in time order as long as that clock does not step back; if it
-- does, a key's requests leave later than they should (more refusals, for
-- at most the step), never earlier.
local answered = redis.call('GET', KEYS[1])
if answered then
    return cjson.decode(answered)
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local window = tonumber(ARGV[1])
local cutoff = now - window
local out = { now }
for i = 1, #KEYS - 1 do
    local key = KEYS[i + 1]
    local limit = math.max(tonumber(ARGV[2 * i + 1]), 1)
    local spends = math.max(tonumber(ARGV[2 * i + 2]), 0)
    local n = redis.call('LLEN', key)
    -- The requests that have left the window, oldest first. Each accepted
    -- request is pushed once and popped once.
    while n > 0 and tonumber(redis.call('LINDEX', key, -1)) <= cutoff do
        redis.call('RPOP', key)
        n = n - 1
    end
    local room = math.max(limit - n, 0)
    local take = math.min(room, spends)
    if take > 0 then
        -- In pushes of at most 1,000: Lua's unpack takes no more than a
        -- few thousand values at once.
        local pushed = 0
        while pushed < take do
            local times = {}
            for j = 1, math.min(take - pushed, 1000) do
                times[j] = now
            end
            redis.call('LPUSH', key, unpack(times))
            pushed = pushed + #times
        end
        -- Every request in the list leaves the window within one window.
        redis.call('PEXPIRE', key, window)
        n = n + take
    end
    local reset = 0
    if n >= limit then
        -- Free again once the limit-th newest request has left.
        reset = tonumber(redis.call('LINDEX', key, limit - n - 1)) + window - now
    end
    out[2 * i] = room
    out[2 * i + 1] = reset
end
redis.call('SET', KEYS[1], cjson.encode(out), 'PX', ARGV[2])
return out
