-- The limiter's common case, for a key in steady use (BENCHMARKS.md,
-- "auth", session 8). 0019's one statement served a batch only while every
-- key's oldest request in its window was still inside it; once a key had
-- been busy for a whole window, its oldest request left with nearly every
-- batch, and most batches went through `jeanus_rate_limit`'s general path
-- (a dozen statements and a search per key): in `bench auth`, PostgreSQL's
-- CPU per /api/v1/me doubled from the first minute on (62-70 us -> 116-160
-- us). The statement now moves such a window itself: the requests after
-- the old start are read in ring order (which is time order, 0013) up to
-- the first still inside, at most 256 of them, as one range of the slots'
-- primary key (two where the range wraps around the ring); the new start
-- and its time are written with the state. A key with more than 256
-- requests to move past (idle for long, or very busy between two batches)
-- still takes the general path. Answers are unchanged: see 0019.

create or replace function jeanus_rate_limit_keys(
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
    ), moved as materialized (
        -- Each key's window now: its start (null: past the search's reach)
        -- and the time of its oldest request. Only the keys whose oldest
        -- request has left are searched, from the old start in ring order,
        -- up to the first request still inside (at most 256 on). A missing
        -- slot (only a crash makes one) counts as left, as in 0013.
        select l.key_id, l.lim, l.accepted, l.window_start as old_start,
               l.window_start, l.oldest_at
          from locked l, clock c
         where not (l.window_start < l.accepted
                    and (l.oldest_at is null or l.oldest_at <= c.now_at - win))
        union all
        select l.key_id, l.lim, l.accepted, l.window_start,
               case when f.n is not null then f.n
                    when l.accepted - l.window_start - 1 <= 256 then l.accepted
               end,
               f.at
          from locked l
         cross join clock c
         cross join lateral (
              select l.window_start % l.lim as s0,
                     least(l.accepted - l.window_start - 1, 256) as ahead,
                     c.now_at - win as cutoff
         ) r
          left join lateral (
              select x.n, x.at
                from ((select l.window_start - r.s0 + s.slot as n, s.at
                         from rate_limit_slots s
                        where s.key_id = l.key_id
                          and s.slot > r.s0
                          and s.slot <= least(r.s0 + r.ahead, l.lim - 1)
                          and s.at > r.cutoff
                        order by s.slot
                        limit 1)
                      union all
                      -- The part of the range past the ring's end, if any.
                      (select l.window_start - r.s0 + l.lim + s.slot as n, s.at
                         from rate_limit_slots s
                        where s.key_id = l.key_id
                          and s.slot <= r.s0 + r.ahead - l.lim
                          and s.at > r.cutoff
                        order by s.slot
                        limit 1)) x
               order by x.n
               limit 1
          ) f on true
         where l.window_start < l.accepted
           and (l.oldest_at is null or l.oldest_at <= c.now_at - win)
    ), go as materialized (
        select c.now_at
          from clock c
         where c.n > 0
           and not exists (select from unnest(key_ids, limits) as r(key_id, lim)
                             join locked l using (key_id)
                            where l.lim <> r.lim)
           and not exists (select from moved m where m.window_start is null)
    ), st as (
        select r.i, m.key_id, m.lim, m.accepted, m.window_start, m.oldest_at, m.old_start,
               m.lim - (m.accepted - m.window_start) as room,
               least(m.lim - (m.accepted - m.window_start), r.spend) as take
          from moved m
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
               window_start = st.window_start,
               oldest_at = case when st.window_start < st.accepted then st.oldest_at
                                when st.take > 0 then go.now_at end
          from go, st
         where s.key_id = any(key_ids) and s.key_id = st.key_id
           and (st.take > 0 or st.window_start <> st.old_start)
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
