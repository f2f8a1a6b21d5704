-- The writer's chain without a probe per tenant. 0016 stored the writer's
-- hashes only after checking, for each tenant of the batch, that the tip it
-- chained from was the tenant's last stored hash: one backward probe of
-- events_tenant_position and a heap fetch per tenant, under the head lock.
-- With 64 writers that was most of what the chain cost the log (BENCHMARKS.md,
-- "chain": +6 to +8 % with the probes, +2.6 % without).
--
-- The head already vouches for the tips. The writer (schema::store::ChainTip)
-- learns tips only from its own batches' answers, and forgets all of them
-- whenever a batch does not start right after the head it knew: the tips it
-- holds all come from one unbroken run of its own batches, each the log's
-- last events when it committed. When the head is still the one it knew,
-- nobody has appended since that run, so each tip is still its tenant's last
-- hash. A writer that sent a wrong tip with the right head is a bug in that
-- writer, of the same kind as a wrong hash, which the database has always
-- stored as sent: `verify` recomputes every hash from the rows and names the
-- first wrong one. p_seeds is kept in the signature (a writer of 0016's
-- build calls this one unchanged) and no longer read.

-- As in 0016: p_head, the head the writer expects; p_tenants, each tenant of
-- the batch it chained (p_seeds, the tips it chained them from, unread);
-- p_hashes, one hash per event in batch order. All null to
-- have the database compute the chain. Returns one row per append, in any
-- order: its outcome, and for an accepted one its positions, the hash of
-- its last event, and whether the stored hashes are the writer's.
create or replace function jeanus_append(p_batch jsonb, p_head bigint, p_tenants uuid[],
                                         p_seeds bytea[], p_hashes bytea[])
returns table (idx integer, outcome text, version bigint, first_position bigint,
               last_position bigint, last_hash bytea, writer_chained boolean)
-- Each statement's generic plan, once per session: left to choose, plpgsql
-- re-planned the writer-chained insert (array parameters) at every call,
-- 0.1–0.2 ms of a one-append batch. Every statement here is
-- an index probe or a scan of the batch itself, and its generic plan on an
-- empty log is the same as on a large one (checked with EXPLAIN), so the
-- plan trap described in 0001 cannot come back this way.
set plan_cache_mode = force_generic_plan
language plpgsql
as $$
declare
    head        bigint;
    next_pos    bigint;
    a           jsonb;
    n           integer;
    stored      integer;
    sid         uuid;
    cur         bigint;
    versions    jsonb := '{}'::jsonb;  -- stream id -> version, as this batch moves it
    acc_idx     integer[] := '{}';     -- accepted appends: index in p_batch,
    acc_pos     bigint[]  := '{}';     --   position of their first event,
    acc_ver     bigint[]  := '{}';     --   the stream version before them,
    acc_n       integer[] := '{}';     --   and their number of events
    i           integer := 0;
    everyone    boolean := true;       -- every append of the batch is accepted
    tenants     uuid[]  := '{}';       -- the tenants of the accepted appends
    chained     boolean;               -- the writer's hashes are the chain's
    hashes      bytea[];               -- the batch's hashes, by position - head
    k           integer;
begin
    select h.position into head from event_log_head h where h.singleton for update;
    next_pos := head + 1;

    for a in select value from jsonb_array_elements(p_batch) loop
        idx := i;
        i := i + 1;
        n := jsonb_array_length(a->'events');
        sid := (a->>'stream_id')::uuid;

        -- One index probe per event id (see 0001 for why it is written so).
        select count(distinct hit.id) into stored
          from jsonb_array_elements(a->'events') x
         cross join lateral (select e.id from events e
                              where e.id = (x.value->>'id')::uuid limit 1) hit;

        if versions ? sid::text then
            cur := (versions->>sid::text)::bigint;
        else
            select coalesce(max(e.stream_version), 0) into cur from events e where e.stream_id = sid;
        end if;

        if n > 0 and stored = n then
            outcome := 'duplicate'; version := cur; first_position := null; last_position := null;
            last_hash := null; writer_chained := null; everyone := false;
            return next;
            continue;
        end if;

        if stored > 0 or (a->'expected' is not null and jsonb_typeof(a->'expected') <> 'null'
                          and (a->>'expected')::bigint <> cur) then
            outcome := 'conflict'; version := cur; first_position := null; last_position := null;
            last_hash := null; writer_chained := null; everyone := false;
            return next;
            continue;
        end if;

        acc_idx := acc_idx || idx;
        acc_pos := acc_pos || next_pos;
        acc_ver := acc_ver || cur;
        acc_n   := acc_n || n;
        tenants := tenants || (a->>'tenant_id')::uuid;

        versions := versions || jsonb_build_object(sid::text, cur + n);
        next_pos := next_pos + n;
    end loop;

    if next_pos > head + 1 then
        -- The writer's hashes are the chain's when it predicted this very
        -- batch: the head it expected, every append accepted (so every
        -- position is where it put it), one hash per event, and a tip sent
        -- for each tenant. The head alone vouches for the tips (0017's
        -- header); anything else (a second writer appended meanwhile, a
        -- conflict, a duplicate, a tenant without a tip) and the hashes are
        -- computed here.
        chained := p_hashes is not null
            and head = p_head
            and everyone
            and cardinality(p_hashes) = next_pos - head - 1
            and tenants <@ p_tenants;
        if chained then
            insert into events (position, id, tenant_id, stream_type, stream_id, stream_version,
                                event_type, schema_version, occurred_at, metadata, data, hash)
            select r.position, r.id, r.tenant_id, r.stream_type, r.stream_id, r.stream_version,
                   r.event_type, r.schema_version, r.occurred_at, r.metadata, r.data,
                   p_hashes[(r.position - head)::integer]
              from jeanus_append_rows(p_batch, acc_idx, acc_pos, acc_ver) r;
            hashes := p_hashes;
        else
            with r as materialized (
                select * from jeanus_append_rows(p_batch, acc_idx, acc_pos, acc_ver)
            ),
            -- Each tenant's last hash: one backward probe of events_tenant_position.
            seeds as (
                select t.tenant_id,
                       coalesce((select e.hash from events e
                                  where e.tenant_id = t.tenant_id
                                  order by e.position desc limit 1),
                                '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea)
                           as hash
                  from (select distinct r.tenant_id from r) t
            ),
            written as (
                insert into events (position, id, tenant_id, stream_type, stream_id, stream_version,
                                    event_type, schema_version, occurred_at, metadata, data, hash)
                select r.position, r.id, r.tenant_id, r.stream_type, r.stream_id, r.stream_version,
                       r.event_type, r.schema_version, r.occurred_at, r.metadata, r.data,
                       jeanus_chain(jeanus_event_canonical(r.position, r.id, r.event_type,
                                                           r.schema_version, r.stream_type,
                                                           r.stream_id, r.stream_version,
                                                           r.occurred_at, r.metadata, r.data),
                                    s.hash)
                           over (partition by r.tenant_id order by r.position)
                  from r join seeds s on s.tenant_id = r.tenant_id
                returning events.position, events.hash
            )
            select array_agg(w.hash order by w.position) into hashes from written w;
        end if;

        update event_log_head set position = next_pos - 1 where singleton;
        perform pg_notify('jeanus_events', (next_pos - 1)::text);
    end if;

    -- The accepted appends, each with the hash of its last event: what the
    -- writer chains its next batch from.
    for k in 1..coalesce(array_length(acc_idx, 1), 0) loop
        idx := acc_idx[k];
        n := acc_n[k];
        outcome := 'appended';
        version := acc_ver[k] + n;
        if n > 0 then
            first_position := acc_pos[k];
            last_position := acc_pos[k] + n - 1;
            last_hash := hashes[(acc_pos[k] + n - 1 - head)::integer];
        else
            first_position := null; last_position := null; last_hash := null;
        end if;
        writer_chained := coalesce(chained, false);
        return next;
    end loop;
end;
$$;
