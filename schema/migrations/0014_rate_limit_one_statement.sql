-- The rate limiter's common case in one statement (BENCHMARKS.md, "auth").
-- 0013's `jeanus_rate_limit` runs five statements per batch whatever the
-- batch holds: create missing states, lock, look for changed limits, look for
-- windows to advance, decide. Under a steady load none of the middle three
-- finds anything to do, yet each costs an executor start-up and tear-down.
--
-- Now one statement comes first and decides the batch when every key of it
-- already has its state, under the limit asked, with no window to advance:
-- it locks the keys in key order, reads PostgreSQL's clock once all are
-- locked (an aggregate over the locked rows has consumed them all before it
-- projects the time), checks that nothing needs the general path, and writes
-- the slots and states. Everything it decides from comes from the locked
-- rows, never from the statement's snapshot, which may predate a commit the
-- lock waited for. When anything needs the general path, it writes and
-- answers nothing, and 0013's statements follow unchanged. It locks nothing
-- unless every key has its state, so that missing states are still created
-- before any lock is taken, as in 0013 (no deadlock across instances).

create or replace function jeanus_rate_limit(
    key_ids   uuid[],
    limits    integer[],
    consume   boolean[],
    window_ms bigint
)
returns table (
    idx            bigint,
    allowed        boolean,
    remaining      integer,
    reset_after_ms bigint,
    now_ms         bigint
)
language plpgsql
-- Planned once per connection: these statements take their keys as arrays,
-- and planning them afresh each call cost more than running them.
set plan_cache_mode = force_generic_plan
as $$
declare
    win    interval := window_ms * interval '1 millisecond';
    now_at timestamptz;
    cutoff timestamptz;
    k      record;
    lo     bigint;   -- a request number known to have left the window
    hi     bigint;   -- a request number known to be inside it, or `accepted`
    step   bigint;
    probe  bigint;
    t      timestamptz;
    -- The advanced windows: key, new start, time of the new start (or null).
    adv_keys   uuid[]        := '{}';
    adv_start  bigint[]      := '{}';
    adv_oldest timestamptz[] := '{}';
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
    ), req as (
        select r.key_id, r.spend, r.i,
               count(*) filter (where r.spend) over (partition by r.key_id order by r.i) as spent
          from unnest(key_ids, consume) with ordinality as r(key_id, spend, i)
    ), spending as (
        select req.key_id, count(*) filter (where req.spend) as n from req group by req.key_id
    ), st as (
        select l.key_id, l.lim, l.accepted, l.window_start, l.oldest_at,
               l.lim - (l.accepted - l.window_start) as free,
               least(l.lim - (l.accepted - l.window_start), sp.n) as take
          from locked l
          join spending sp using (key_id)
    ), slots as (
        insert into rate_limit_slots as sl (key_id, slot, at)
        select st.key_id, ((st.accepted + j) % st.lim)::integer, go.now_at
          from go, st cross join lateral generate_series(0, st.take - 1) as j
        on conflict (key_id, slot) do update set at = excluded.at
    ), states as (
        update rate_limit_state s
           set accepted = st.accepted + st.take,
               oldest_at = case when st.window_start < st.accepted then st.oldest_at
                                else go.now_at end
          from go, st
         where s.key_id = any(key_ids) and s.key_id = st.key_id and st.take > 0
    )
    select req.i,
           (req.spent - req.spend::int) < st.free,
           greatest(st.free - req.spent, 0)::integer,
           case
               when st.free - req.spent > 0 then 0::bigint
               else greatest(0, ceil(extract(epoch from (
                   (case when st.window_start < st.accepted then st.oldest_at else go.now_at end)
                   + win - go.now_at)) * 1000))::bigint
           end,
           floor(extract(epoch from go.now_at) * 1000)::bigint
      from go, req join st using (key_id)
     order by req.i;
    if found then
        return;
    end if;

    -- The general path: 0013's statements, unchanged.
    -- A key's first request (or the first since a crash) creates its state.
    insert into rate_limit_state as s (key_id, lim, accepted, window_start)
    select distinct on (r.key_id) r.key_id, r.lim, 0, 0
      from unnest(key_ids, limits) as r(key_id, lim)
     order by r.key_id
    on conflict (key_id) do nothing;

    -- Lock every key of the batch, in key order: batches from several api
    -- instances lock in the same order and cannot deadlock. The time is read
    -- once all are locked: whoever held a lock before wrote earlier times, so
    -- each ring stays in time order, which the search below relies on.
    perform from rate_limit_state s where s.key_id = any(key_ids) order by s.key_id for update;
    now_at := clock_timestamp();
    cutoff := now_at - win;

    -- A changed limit: the ring's slot numbers no longer fit; the key starts
    -- over under its newest limit (that of its last request in the batch).
    for k in
        select n.key_id, n.lim
          from (select distinct on (r.key_id) r.key_id, r.lim
                  from unnest(key_ids, limits) with ordinality as r(key_id, lim, i)
                 order by r.key_id, r.i desc) n
          join rate_limit_state s on s.key_id = n.key_id
         where s.lim <> n.lim
    loop
        delete from rate_limit_slots sl where sl.key_id = k.key_id;
        update rate_limit_state s
           set lim = k.lim, accepted = 0, window_start = 0, oldest_at = null
         where s.key_id = k.key_id;
    end loop;

    -- Advance the windows whose oldest request has left. Ring order is time
    -- order, so the first request still inside is found by probing the next
    -- one (under a steady load, the one that answers), then by an
    -- exponential and a binary search over request numbers: O(log n) slot
    -- reads however long the key was idle. A missing slot (only a crash
    -- makes one) counts as left. The new starts are written with the states,
    -- below.
    for k in
        select s.key_id, s.lim, s.accepted, s.window_start, nx.at as next_at
          from rate_limit_state s
          left join rate_limit_slots nx
            on nx.key_id = s.key_id and nx.slot = ((s.window_start + 1) % s.lim)::integer
         where s.key_id = any(key_ids)
           and s.window_start < s.accepted
           and (s.oldest_at is null or s.oldest_at <= cutoff)
    loop
        lo := k.window_start;
        hi := k.accepted;
        t := null;
        if lo + 1 >= k.accepted then
            hi := k.accepted;               -- every request has left
        elsif k.next_at > cutoff then
            hi := lo + 1;
            t := k.next_at;
        else
            lo := lo + 1;
            step := 2;
            loop
                probe := lo + step;
                exit when probe >= k.accepted;
                t := (select sl.at from rate_limit_slots sl
                       where sl.key_id = k.key_id and sl.slot = (probe % k.lim)::integer);
                exit when t > cutoff;
                lo := probe;
                step := step * 2;
            end loop;
            hi := least(probe, k.accepted);
            while hi - lo > 1 loop
                probe := (lo + hi) / 2;
                t := (select sl.at from rate_limit_slots sl
                       where sl.key_id = k.key_id and sl.slot = (probe % k.lim)::integer);
                if t > cutoff then hi := probe; else lo := probe; end if;
            end loop;
            t := (select sl.at from rate_limit_slots sl
                   where sl.key_id = k.key_id and sl.slot = (hi % k.lim)::integer
                     and hi < k.accepted);
        end if;
        adv_keys := adv_keys || k.key_id;
        adv_start := adv_start || hi;
        adv_oldest := adv_oldest || t;
    end loop;

    -- Decide every request in arrival order per key, then write the accepted
    -- requests' times and the new states, one statement each. Of a key's
    -- requests that spend the quota, the first `free` are accepted (`free`:
    -- the room left in its window); a request that only reads it is allowed
    -- when room is left after the spending requests before it.
    return query
    with req as (
        select r.key_id, r.spend, r.i,
               count(*) filter (where r.spend) over (partition by r.key_id order by r.i) as spent
          from unnest(key_ids, consume) with ordinality as r(key_id, spend, i)
    ), spending as (
        select req.key_id, count(*) filter (where req.spend) as n from req group by req.key_id
    ), st as (
        select s.key_id, s.lim, s.accepted, w.window_start, w.oldest_at,
               s.lim - (s.accepted - w.window_start) as free,
               least(s.lim - (s.accepted - w.window_start), sp.n) as take,
               a.key_id is not null as advanced
          from rate_limit_state s
          join spending sp using (key_id)
          left join unnest(adv_keys, adv_start, adv_oldest) as a(key_id, window_start, oldest_at)
            using (key_id)
         cross join lateral (select coalesce(a.window_start, s.window_start) as window_start,
                                    case when a.key_id is null then s.oldest_at
                                         else a.oldest_at end as oldest_at) w
    ), slots as (
        insert into rate_limit_slots as sl (key_id, slot, at)
        select st.key_id, ((st.accepted + j) % st.lim)::integer, now_at
          from st cross join lateral generate_series(0, st.take - 1) as j
        on conflict (key_id, slot) do update set at = excluded.at
    ), states as (
        update rate_limit_state s
           set accepted = st.accepted + st.take,
               window_start = st.window_start,
               oldest_at = case when st.window_start < st.accepted then st.oldest_at
                                when st.take > 0 then now_at end
          from st
         where s.key_id = any(key_ids) and s.key_id = st.key_id and (st.take > 0 or st.advanced)
    )
    select req.i,
           (req.spent - req.spend::int) < st.free,
           greatest(st.free - req.spent, 0)::integer,
           case
               when st.free - req.spent > 0 then 0::bigint
               else greatest(0, ceil(extract(epoch from (
                   (case when st.window_start < st.accepted then st.oldest_at else now_at end)
                   + win - now_at)) * 1000))::bigint
           end,
           floor(extract(epoch from now_at) * 1000)::bigint
      from req join st using (key_id)
     order by req.i;
end
$$;
