-- The rate limiter with one row per key per batch (BENCHMARKS.md, "auth",
-- session 7). 0014's statement takes one row per request and works out each
-- request's answer in SQL: a window count of spends per key, a join back to
-- the requests and a sort, per request. The api now sends each key of a
-- batch once, with how many of its requests spend quota, and works out each
-- request's answer itself from its key's room (api/src/ratelimit.rs); a key
-- whose requests only read the quota is sent with 0 spends. The common case
-- is one statement as in 0014, with the slots of a ring not yet wrapped
-- inserted plainly (no conflict to look for) and the others upserted as
-- before: 3,226,822 instructions for 32 keys against 0014's 3,957,614.
-- Anything else (a missing state, a changed limit, a window to advance) goes
-- through 0013's general path in `jeanus_rate_limit`, unchanged, one request
-- per spend, and each key's room is read back from its first answer.
--
-- Per key (`idx`, its position in `key_ids`, from 1): `room`, the requests
-- it may still spend in its window before this batch's; and `reset_after_ms`,
-- once the room is spent, how long until a request is next free.

create function jeanus_rate_limit_keys(
    key_ids   uuid[],     -- each key once
    limits    integer[],
    spends    integer[],  -- the key's requests in the batch that spend quota
    window_ms bigint
)
returns table (
    idx            bigint,
    room           integer,
    reset_after_ms bigint,
    now_ms         bigint
)
language plpgsql
-- As 0014: planned once per connection.
set plan_cache_mode = force_generic_plan
as $$
declare
    win interval := window_ms * interval '1 millisecond';
begin
    return query
    with locked as materialized (
        select s.key_id, s.lim, s.accepted, s.window_start, s.oldest_at
          from rate_limit_state s
         where s.key_id = any(key_ids)
           and not exists (select from unnest(key_ids) as want(key_id)
                            where not exists (select from rate_limit_state x
                                               where x.key_id = want.key_id))
         order by s.key_id
           for update
    ), clock as materialized (
        select clock_timestamp() as now_at, count(*) as n from locked
    ), go as materialized (
        select c.now_at
          from clock c
         where c.n > 0
           and not exists (select from unnest(key_ids, limits) as r(key_id, lim)
                             join locked l using (key_id)
                            where l.lim <> r.lim)
           and not exists (select from locked l
                            where l.window_start < l.accepted
                              and (l.oldest_at is null or l.oldest_at <= c.now_at - win))
    ), st as (
        select r.i, l.key_id, l.lim, l.accepted, l.window_start, l.oldest_at,
               l.lim - (l.accepted - l.window_start) as room,
               least(l.lim - (l.accepted - l.window_start), r.spend) as take
          from locked l
          join unnest(key_ids, spends) with ordinality as r(key_id, spend, i) using (key_id)
    ), taken as (
        select st.key_id, st.accepted + j as n, st.lim
          from go, st cross join lateral generate_series(0, st.take - 1) as j
    ), fresh as (
        -- Request numbers below the limit: their slots were never written.
        insert into rate_limit_slots (key_id, slot, at)
        select t.key_id, t.n::integer, go.now_at
          from go, taken t
         where t.n < t.lim
    ), reused as (
        insert into rate_limit_slots as sl (key_id, slot, at)
        select t.key_id, (t.n % t.lim)::integer, go.now_at
          from go, taken t
         where t.n >= t.lim
        on conflict (key_id, slot) do update set at = excluded.at
    ), states as (
        update rate_limit_state s
           set accepted = st.accepted + st.take,
               oldest_at = case when st.window_start < st.accepted then st.oldest_at
                                else go.now_at end
          from go, st
         where s.key_id = any(key_ids) and s.key_id = st.key_id and st.take > 0
    )
    select st.i,
           st.room::integer,
           greatest(0, ceil(extract(epoch from (
               (case when st.window_start < st.accepted then st.oldest_at else go.now_at end)
               + win - go.now_at)) * 1000))::bigint,
           floor(extract(epoch from go.now_at) * 1000)::bigint
      from go, st
     order by st.i;
    if found then
        return;
    end if;

    -- The general path: one request per spend (one that only reads for a
    -- key that spends nothing), decided by `jeanus_rate_limit`. A key's
    -- first request tells its room: a read is answered `remaining` = room;
    -- a spend is accepted when there is room, with `remaining` = room - 1.
    -- Its last request tells the reset once the room is spent.
    return query
    with asked as materialized (
        select r.i, r.key_id, r.lim, r.spend, n,
               row_number() over (order by r.i, n) as pos
          from unnest(key_ids, limits, spends) with ordinality as r(key_id, lim, spend, i)
         cross join lateral generate_series(1, greatest(r.spend, 1)) as n
    ), decided as materialized (
        select d.idx, d.allowed, d.remaining, d.reset_after_ms, d.now_ms
          from (select array_agg(a.key_id order by a.pos) as k,
                       array_agg(a.lim order by a.pos) as l,
                       array_agg(a.spend > 0 order by a.pos) as c
                  from asked a) b,
               jeanus_rate_limit(b.k, b.l, b.c, window_ms) d
    ), per_key as (
        select a.i,
               min(a.pos) as first_pos,
               max(a.pos) as last_pos,
               min(a.spend) as spend
          from asked a
         group by a.i
    )
    select k.i,
           (case when k.spend = 0 then f.remaining
                 when f.allowed then f.remaining + 1
                 else 0 end)::integer,
           l.reset_after_ms,
           f.now_ms
      from per_key k
      join decided f on f.idx = k.first_pos
      join decided l on l.idx = k.last_pos
     order by k.i;
end
$$;
