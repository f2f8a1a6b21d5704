-- Tamper evidence: every event carries `hash`, chaining it to the tenant's
-- previous event (ARCHITECTURE.md, "Tamper evidence"):
--
--   hash = SHA-256(prev_hash ‖ canonical bytes of the event)
--
-- prev_hash is the hash of the same tenant's previous event (by position),
-- or 32 zero bytes for a tenant's first event. The canonical bytes are the
-- UTF-8 text that PostgreSQL gives for the jsonb object of the event as
-- `GET /api/v1/events` returns it, without `hash`:
--
--   {"id": …, "data": …, "type": …, "metadata": …, "position": …,
--    "stream_id": …, "occurred_at": …, "stream_type": …,
--    "schema_version": …, "stream_version": …}
--
-- (jsonb's text form: keys sorted by byte length, then bytewise; ", " and
-- ": " separators; numbers and strings as jsonb prints them; occurred_at as
-- YYYY-MM-DDTHH:MI:SS.ffffffZ in UTC). `jeanus_event_canonical` builds that
-- text by concatenation, which is 2.5 times cheaper than building the jsonb
-- object and printing it (schema/tests/chain.rs holds the two equal).

-- The canonical bytes of one event. Stable, not immutable (to_char), so that
-- it is inlined into the statements that use it.
create function jeanus_event_canonical(
    p_position bigint, p_id uuid, p_event_type text, p_schema_version integer,
    p_stream_type text, p_stream_id uuid, p_stream_version bigint,
    p_occurred_at timestamptz, p_metadata jsonb, p_data jsonb)
returns bytea
language sql stable
as $$
    select convert_to(
        '{"id": "' || p_id::text
        || '", "data": ' || p_data::text
        || ', "type": ' || to_json(p_event_type)::text
        || ', "metadata": ' || p_metadata::text
        || ', "position": ' || p_position::text
        || ', "stream_id": "' || p_stream_id::text
        || '", "occurred_at": "'
        || to_char(p_occurred_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
        || '", "stream_type": ' || to_json(p_stream_type)::text
        || ', "schema_version": ' || p_schema_version::text
        || ', "stream_version": ' || p_stream_version::text
        || '}',
        'UTF8')
$$;

-- One step of the chain: the aggregate's state is the previous hash; `seed`
-- is the hash the chain continues from (used for the first row only).
create function jeanus_chain_step(state bytea, canonical bytea, seed bytea)
returns bytea
language plpgsql immutable
as $$
begin
    return sha256(coalesce(state, seed) || canonical);
end;
$$;

-- jeanus_chain(canonical, seed) over (partition by tenant_id order by position):
-- each row's hash. A window aggregate whose frame grows row by row is
-- advanced, not recomputed, so the chain costs one step per row.
create aggregate jeanus_chain(bytea, bytea) (
    sfunc = jeanus_chain_step,
    stype = bytea
);

alter table events add column hash bytea;

-- The chain of the events already stored.
update events e
   set hash = c.hash
  from (select position,
               jeanus_chain(jeanus_event_canonical(position, id, event_type, schema_version,
                                                   stream_type, stream_id, stream_version,
                                                   occurred_at, metadata, data),
                            '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea)
                   over (partition by tenant_id order by position) as hash
          from events) c
 where e.position = c.position;

alter table events
    alter column hash set not null,
    add constraint events_hash_is_sha256 check (octet_length(hash) = 32);

-- As in 0001, plus the hash. The positions are reserved under the
-- event_log_head row lock, so each tenant's last hash, read in the same
-- statement that inserts, cannot move under us: the chain has no races.
create or replace function jeanus_append(p_batch jsonb)
returns table (idx integer, outcome text, version bigint, first_position bigint, last_position bigint)
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
    acc_ver     bigint[]  := '{}';     --   and the stream version before them
    i           integer := 0;
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
            return next;
            continue;
        end if;

        if stored > 0 or (a->'expected' is not null and jsonb_typeof(a->'expected') <> 'null'
                          and (a->>'expected')::bigint <> cur) then
            outcome := 'conflict'; version := cur; first_position := null; last_position := null;
            return next;
            continue;
        end if;

        acc_idx := acc_idx || idx;
        acc_pos := acc_pos || next_pos;
        acc_ver := acc_ver || cur;

        outcome := 'appended';
        version := cur + n;
        first_position := case when n > 0 then next_pos end;
        last_position := case when n > 0 then next_pos + n - 1 end;
        versions := versions || jsonb_build_object(sid::text, cur + n);
        next_pos := next_pos + n;
        return next;
    end loop;

    if next_pos > head + 1 then
        with r as materialized (
            select d.first_pos + x.ord - 1 as position, (x.value->>'id')::uuid as id,
                   (b.ap->>'tenant_id')::uuid as tenant_id, b.ap->>'stream_type' as stream_type,
                   (b.ap->>'stream_id')::uuid as stream_id, d.base_version + x.ord as stream_version,
                   x.value->>'event_type' as event_type,
                   (x.value->>'schema_version')::integer as schema_version,
                   (x.value->>'occurred_at')::timestamptz as occurred_at,
                   x.value->'metadata' as metadata, x.value->'data' as data
              from unnest(acc_idx, acc_pos, acc_ver) as d(idx, first_pos, base_version)
             cross join lateral (select p_batch->d.idx as ap) b
             cross join lateral jsonb_array_elements(b.ap->'events') with ordinality as x(value, ord)
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
        )
        insert into events (position, id, tenant_id, stream_type, stream_id, stream_version,
                            event_type, schema_version, occurred_at, metadata, data, hash)
        select r.position, r.id, r.tenant_id, r.stream_type, r.stream_id, r.stream_version,
               r.event_type, r.schema_version, r.occurred_at, r.metadata, r.data,
               jeanus_chain(jeanus_event_canonical(r.position, r.id, r.event_type, r.schema_version,
                                                   r.stream_type, r.stream_id, r.stream_version,
                                                   r.occurred_at, r.metadata, r.data),
                            s.hash)
                   over (partition by r.tenant_id order by r.position)
          from r join seeds s on s.tenant_id = r.tenant_id;

        update event_log_head set position = next_pos - 1 where singleton;
        perform pg_notify('jeanus_events', (next_pos - 1)::text);
    end if;
end;
$$;
