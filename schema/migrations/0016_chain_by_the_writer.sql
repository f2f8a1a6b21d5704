-- The hash chain computed by the writer, not by the database, whenever it
-- can be (ARCHITECTURE.md, "Tamper evidence"). Building each event's
-- canonical text and chaining it through a plpgsql aggregate cost the
-- database about 10 µs an event, inside the section every append
-- serialises on (the head lock): 20 to 47 % of the log's throughput
-- (BENCHMARKS.md, "chain"). The event store's writer knows, after each of
-- its batches, the head and each tenant's last hash; when nobody else has
-- appended since, it chains its next batch itself and sends the hashes,
-- and `jeanus_append` only checks that the prediction holds (the head, every
-- append accepted, each tenant's last stored hash) before storing them.
-- Otherwise it computes the chain as 0010 does. Either way the stored
-- hashes are the same; `verify` recomputes them from the rows.

-- The rows of a batch's accepted appends, without their hashes: append
-- `acc_idx[k]` of `p_batch` starts at position `acc_pos[k]` on a stream at
-- version `acc_ver[k]`.
create function jeanus_append_rows(p_batch jsonb, acc_idx integer[], acc_pos bigint[],
                                   acc_ver bigint[])
returns table ("position" bigint, id uuid, tenant_id uuid, stream_type text, stream_id uuid,
               stream_version bigint, event_type text, schema_version integer,
               occurred_at timestamptz, metadata jsonb, data jsonb)
language sql stable
as $$
    select d.first_pos + x.ord - 1, (x.value->>'id')::uuid,
           (b.ap->>'tenant_id')::uuid, b.ap->>'stream_type',
           (b.ap->>'stream_id')::uuid, d.base_version + x.ord,
           x.value->>'event_type',
           (x.value->>'schema_version')::integer,
           (x.value->>'occurred_at')::timestamptz,
           x.value->'metadata', x.value->'data'
      from unnest(acc_idx, acc_pos, acc_ver) as d(idx, first_pos, base_version)
     cross join lateral (select p_batch->d.idx as ap) b
     cross join lateral jsonb_array_elements(b.ap->'events') with ordinality as x(value, ord)
$$;

drop function jeanus_append(jsonb);

-- As in 0010, with the writer's prediction: p_head, the head it expects;
-- p_tenants and p_seeds, each tenant of the batch with the last hash it
-- chained from; p_hashes, one hash per event in batch order. All null to
-- have the database compute the chain. Returns one row per append, in any
-- order: its outcome, and for an accepted one its positions, the hash of
-- its last event, and whether the stored hashes are the writer's.
create function jeanus_append(p_batch jsonb, p_head bigint, p_tenants uuid[],
                              p_seeds bytea[], p_hashes bytea[])
returns table (idx integer, outcome text, version bigint, first_position bigint,
               last_position bigint, last_hash bytea, writer_chained boolean)
-- Each statement's generic plan, once per session: left to choose, plpgsql
-- re-planned the writer-chained insert (array parameters, the tip filter)
-- at every call, 0.1–0.2 ms of a one-append batch. Every statement here is
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
    written     bigint;
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
        -- position is where it put it), one hash per event, and, for each
        -- tenant, the last stored hash it chained from. Anything else (a
        -- second writer appended meanwhile, a conflict, a duplicate, a
        -- tenant it has not seen) and the hashes are computed here.
        chained := p_hashes is not null
            and head = p_head
            and everyone
            and cardinality(p_hashes) = next_pos - head - 1
            and tenants <@ p_tenants;
        if chained then
            -- The tips, checked in the same statement that inserts (an
            -- uncorrelated filter, evaluated once): every row is written,
            -- or none.
            insert into events (position, id, tenant_id, stream_type, stream_id, stream_version,
                                event_type, schema_version, occurred_at, metadata, data, hash)
            select r.position, r.id, r.tenant_id, r.stream_type, r.stream_id, r.stream_version,
                   r.event_type, r.schema_version, r.occurred_at, r.metadata, r.data,
                   p_hashes[(r.position - head)::integer]
              from jeanus_append_rows(p_batch, acc_idx, acc_pos, acc_ver) r
             -- Each tip: one backward probe of events_tenant_position.
             where not exists (
                 select from unnest(p_tenants, p_seeds) as s(tenant_id, seed)
                  where s.seed is distinct from coalesce(
                            (select e.hash from events e
                              where e.tenant_id = s.tenant_id
                              order by e.position desc limit 1),
                            '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea));
            get diagnostics written = row_count;
            chained := written > 0;
        end if;
        if chained then
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
