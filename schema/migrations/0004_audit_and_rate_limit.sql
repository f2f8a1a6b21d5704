-- The audit log of every /api/v1 and /admin/v1 request, and the state of the
-- per-key rate limit. Both are written by the api on the request path (never
-- by the projector): neither is an event stream nor a read model.

-- ---- audit log ----------------------------------------------------------

-- One row per request that got a response, committed before the response is
-- sent (api/src/audit.rs, in group commits). Append-only: nothing updates or
-- deletes a row. No bodies, no keys, no Authorization header.
create table audit_log (
    id          uuid             primary key,      -- UUIDv7
    -- The key's tenant; for /admin/v1 the tenant in the path; null when the
    -- request could not be tied to one (no key, a malformed or unknown key).
    tenant_id   uuid,
    at          timestamptz      not null,         -- when the request arrived
    key_id      uuid,
    key_label   text,
    method      text             not null,
    route       text,                              -- the matched pattern, e.g. /api/v1/keys/{id}
    path        text             not null,
    query       text,
    status      smallint         not null,
    error_code  text,                              -- the envelope's `code`, for errors
    request_id  text             not null,
    client_ip   inet,
    user_agent  text,                              -- at most 512 characters
    latency_ms  double precision not null
);

-- Newest first per tenant; the untenanted entries (tenant_id is null) are
-- one more prefix of the same index.
create index audit_log_tenant_at on audit_log (tenant_id, at desc, id desc);

-- ---- rate limit ----------------------------------------------------------
--
-- An exact sliding window per key. A key may have at most `lim` accepted
-- requests in any window. Request number n (counting from 0, per key) has its
-- time in slot n % lim of the key's ring, so the ring holds exactly the last
-- `lim` accepted requests and never grows. `window_start` is the number of
-- the oldest accepted request still inside the window; every request moves
-- it forward past the ones that have left the window, so each accepted
-- request is looked at a bounded number of times: O(1) amortised.
--
-- UNLOGGED: the windows are not worth WAL. After a PostgreSQL crash both
-- tables come back empty and every window starts afresh, which lets a key
-- make at most one extra window's worth of requests, once.

create unlogged table rate_limit_state (
    key_id       uuid    primary key,
    -- The limit the ring was built for; a different limit resets the key.
    lim          integer not null check (lim > 0),
    accepted     bigint  not null check (accepted >= 0),
    window_start bigint  not null check (window_start >= 0 and window_start <= accepted)
);

create unlogged table rate_limit_slots (
    key_id uuid        not null,
    slot   integer     not null,
    at     timestamptz not null,
    primary key (key_id, slot)
);

-- Decides a batch of requests, element i of each array describing request i
-- (key, its limit, and whether it spends the quota or only reads it), in a
-- window of `window_ms` milliseconds, by PostgreSQL's clock: the one clock
-- every api instance shares. Answers one row per request, `idx` counting
-- from 1: whether it is allowed, how many remain after it, in how many
-- milliseconds a request is next free (0 while some remain), and the time of
-- the decision (Unix milliseconds).
--
-- Keys are processed in key order (and each key's requests in arrival
-- order), locking each key's state row as it goes, so that batches from
-- several api instances always lock in the same order and cannot deadlock.
-- The time is read once a key is locked: whoever held the lock before wrote
-- earlier times, so each ring stays in time order, which the window's
-- advance relies on. The new slot times and states are written at the end,
-- in one statement each (not one per request); until then a request of this
-- batch is known to be inside the window (its time is now), so the advance
-- never needs to read one. A transaction that only writes unlogged tables
-- writes no WAL, so its commit does not wait for a disk flush.
create function jeanus_rate_limit(
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
as $$
declare
    now_at    timestamptz := clock_timestamp();
    win       interval    := window_ms * interval '1 millisecond';
    cutoff    timestamptz := now_at - win;
    req       record;
    cur       uuid;
    st        rate_limit_state%rowtype;
    first_new bigint;        -- number of the current key's first request accepted in this batch
    oldest    timestamptz;
    in_window bigint;
    -- Writes, applied once at the end (one statement each, not one per request).
    s_keys    uuid[]        := '{}';
    s_lims    integer[]     := '{}';
    s_acc     bigint[]      := '{}';
    s_start   bigint[]      := '{}';
    w_keys    uuid[]        := '{}';
    w_slots   integer[]     := '{}';
    w_at      timestamptz[] := '{}';
    w_mark    integer;       -- length of w_* when the current key began
begin
    for req in
        select r.key_id, r.lim, r.spend, r.i
        from unnest(key_ids, limits, consume) with ordinality as r(key_id, lim, spend, i)
        order by r.key_id, r.i
    loop
        if cur is distinct from req.key_id then
            if cur is not null then
                s_keys := s_keys || cur;
                s_lims := s_lims || st.lim;
                s_acc := s_acc || st.accepted;
                s_start := s_start || st.window_start;
            end if;
            cur := req.key_id;
            select s.* into st from rate_limit_state s where s.key_id = req.key_id for update;
            if not found then
                -- A key's first request (or the first since a crash).
                insert into rate_limit_state as s (key_id, lim, accepted, window_start)
                values (req.key_id, req.lim, 0, 0)
                on conflict (key_id) do nothing;
                select s.* into st from rate_limit_state s where s.key_id = req.key_id for update;
            end if;
            now_at := clock_timestamp();
            cutoff := now_at - win;
            first_new := st.accepted;
            w_mark := coalesce(array_length(w_keys, 1), 0);
        end if;

        -- A changed limit: the ring's slot numbers no longer fit; start over
        -- (dropping this key's slot writes of this batch too).
        if st.lim <> req.lim then
            delete from rate_limit_slots s where s.key_id = req.key_id;
            w_keys := w_keys[1:w_mark];
            w_slots := w_slots[1:w_mark];
            w_at := w_at[1:w_mark];
            st.lim := req.lim;
            st.accepted := 0;
            st.window_start := 0;
            first_new := 0;
        end if;

        -- Drop the requests that have left the window (a missing slot, which
        -- only a crash can cause, counts as left). Those of this batch have not.
        while st.window_start < first_new loop
            select s.at into oldest
              from rate_limit_slots s
             where s.key_id = req.key_id and s.slot = (st.window_start % st.lim)::integer;
            exit when oldest is not null and oldest > cutoff;
            st.window_start := st.window_start + 1;
        end loop;

        in_window := st.accepted - st.window_start;
        allowed := in_window < st.lim;
        if allowed and req.spend then
            w_keys := w_keys || req.key_id;
            w_slots := w_slots || (st.accepted % st.lim)::integer;
            w_at := w_at || now_at;
            st.accepted := st.accepted + 1;
            in_window := in_window + 1;
        end if;

        remaining := (st.lim - in_window)::integer;
        if remaining > 0 then
            reset_after_ms := 0;
        else
            -- Full: the next request is free when the oldest one leaves.
            if st.window_start >= first_new then
                oldest := now_at;  -- accepted in this batch, not written yet
            else
                select s.at into oldest
                  from rate_limit_slots s
                 where s.key_id = req.key_id and s.slot = (st.window_start % st.lim)::integer;
            end if;
            reset_after_ms := greatest(
                0,
                ceil(extract(epoch from (coalesce(oldest, now_at) + win - now_at)) * 1000)
            )::bigint;
        end if;
        idx := req.i;
        now_ms := floor(extract(epoch from now_at) * 1000)::bigint;
        return next;
    end loop;

    if cur is not null then
        s_keys := s_keys || cur;
        s_lims := s_lims || st.lim;
        s_acc := s_acc || st.accepted;
        s_start := s_start || st.window_start;
    end if;
    insert into rate_limit_slots as s (key_id, slot, at)
    select * from unnest(w_keys, w_slots, w_at)
    on conflict (key_id, slot) do update set at = excluded.at;
    update rate_limit_state s
       set lim = u.lim, accepted = u.accepted, window_start = u.window_start
      from unnest(s_keys, s_lims, s_acc, s_start) as u(key_id, lim, accepted, window_start)
     where s.key_id = u.key_id;
end
$$;
