-- The writer's hashes per append, answered as the appends are decided.
-- 0017 decided every append first and answered them all in a second loop,
-- once it knew whether the whole batch was the writer's; and it took the
-- writer's hashes only for a batch with no refused append. PL/pgSQL builds
-- each simple expression's state once per transaction, and every batch is
-- its own transaction, so that second loop, its arrays and the batch-wide
-- test cost one-event appends about 80,000 instructions a call, +6.8 %
-- over the function without the chain (callgrind, BENCHMARKS.md "chain").
--
-- Here each accepted append is answered in the deciding loop, as 0001 did,
-- while the writer's prediction still holds for it: the head is the one the
-- writer expected, no append before it in the batch was refused (so its
-- positions are where the writer put them), its tenant's tip was sent (the
-- head vouches for it, 0017), and a hash was sent for each of its events.
-- Those appends are stored with the writer's hashes. From the first append
-- for which the prediction fails, the rest of the batch is chained here, as
-- 0017 did, from each tenant's last stored hash, which the writer's part of
-- the batch, inserted first, has already moved; those appends are answered
-- once their hashes are known. Zero-event appends have no hash either way.
-- One row per append as before, so a writer of 0016's or 0017's build keeps
-- working; only the hashes it sent beyond the batch's events are now ignored
-- rather than turning the whole batch over to the database.

-- As in 0016: p_head, the head the writer expects; p_tenants, each tenant of
-- the batch it chained (p_seeds, the tips it chained them from, unread);
-- p_hashes, one hash per event in batch order, as if every append were
-- accepted. All null to have the database compute the chain. Returns one
-- row per append, in any order: its outcome, and for an accepted one its
-- positions, the hash of its last event, and whether the stored hashes are
-- the writer's.

create or replace function jeanus_append(p_batch jsonb, p_head bigint, p_tenants uuid[],
                                         p_seeds bytea[], p_hashes bytea[])
returns table (idx integer, outcome text, version bigint, first_position bigint,
               last_position bigint, last_hash bytea, writer_chained boolean)
-- Each statement's generic plan, once per session (see 0017).
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
    acc_idx     integer[] := '{}';     -- appends stored with the writer's hashes: index in p_batch,
    acc_pos     bigint[]  := '{}';     --   position of their first event,
    acc_ver     bigint[]  := '{}';     --   and the stream version before them
    i           integer := 0;
    db_idx      integer[];             -- the same for the appends chained here,
    db_pos      bigint[];
    db_ver      bigint[];
    db_n        integer[];             --   with their number of events
    hashes      bytea[];               -- the hashes the database computed, by position
    k           integer;
begin
    select h.position into head from event_log_head h where h.singleton for update;
    next_pos := head + 1;
    -- Whether the writer's hashes still hold (the answer's column doubles as
    -- the flag): null from a refused append on, whose events the writer had
    -- placed, so every position after it moved; false from the first append
    -- chained here on.
    writer_chained := p_head = head;

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
            last_hash := null; writer_chained := null;
            return next;
            continue;
        end if;

        if stored > 0 or (a->'expected' is not null and jsonb_typeof(a->'expected') <> 'null'
                          and (a->>'expected')::bigint <> cur) then
            outcome := 'conflict'; version := cur; first_position := null; last_position := null;
            last_hash := null; writer_chained := null;
            return next;
            continue;
        end if;

        outcome := 'appended';
        version := cur + n;
        first_position := case when n > 0 then next_pos end;
        last_position := case when n > 0 then next_pos + n - 1 end;
        -- The writer's hashes for this append, while its prediction holds.
        if n = 0 or (writer_chained and (a->>'tenant_id')::uuid = any(p_tenants)
                     and next_pos + n - 1 - head <= cardinality(p_hashes)) then
            acc_idx := acc_idx || idx;
            acc_pos := acc_pos || next_pos;
            acc_ver := acc_ver || cur;
            last_hash := case when n > 0 then p_hashes[(next_pos + n - 1 - head)::integer] end;
            return next;
        else
            writer_chained := false;
            db_idx := db_idx || idx;
            db_pos := db_pos || next_pos;
            db_ver := db_ver || cur;
            db_n := db_n || n;
        end if;
        versions := versions || jsonb_build_object(sid::text, cur + n);
        next_pos := next_pos + n;
    end loop;

    if next_pos > head + 1 then
        insert into events (position, id, tenant_id, stream_type, stream_id, stream_version,
                            event_type, schema_version, occurred_at, metadata, data, hash)
        select r.position, r.id, r.tenant_id, r.stream_type, r.stream_id, r.stream_version,
               r.event_type, r.schema_version, r.occurred_at, r.metadata, r.data,
               p_hashes[(r.position - head)::integer]
          from jeanus_append_rows(p_batch, acc_idx, acc_pos, acc_ver) r;

        -- The rest of the batch, chained here from each tenant's last hash.
        if db_idx is not null then
            with r as materialized (
                select * from jeanus_append_rows(p_batch, db_idx, db_pos, db_ver)
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

            -- The appends the database chained, answered now that their hashes are known.
            outcome := 'appended';
            writer_chained := false;
            for k in 1..array_length(db_idx, 1) loop
                idx := db_idx[k];
                n := db_n[k];
                version := db_ver[k] + n;
                first_position := db_pos[k];
                last_position := db_pos[k] + n - 1;
                last_hash := hashes[(db_pos[k] + n - db_pos[1])::integer];
                return next;
            end loop;
        end if;

        update event_log_head set position = next_pos - 1 where singleton;
        perform pg_notify('jeanus_events', (next_pos - 1)::text);
    end if;

end;
$$;
