-- The rate limiter now keeps its windows in Redis (api/src/ratelimit.rs,
-- api/src/ratelimit/decide.lua): one script call decides a batch, a list of
-- accepted request times per key, where PostgreSQL wrote a slot row and a
-- state row per request. Under `bench auth` the decision was the request
-- path's largest PostgreSQL cost (≈ 88,000 instructions per key and batch)
-- and the longer of its two waits (BENCHMARKS.md, "auth", session 10).
--
-- The tables were UNLOGGED: nothing in them outlives a crash, so nothing is
-- carried over. An api older than this migration still running when it is
-- applied answers 503 `unavailable` (it fails closed) until it is replaced.
drop function jeanus_rate_limit_keys(uuid[], integer[], integer[], bigint);
drop function jeanus_rate_limit(uuid[], integer[], boolean[], bigint);
drop table rate_limit_slots;
drop table rate_limit_state;
