-- The event log: the single source of truth. Every change in Jeanus is a row here.
--
-- Positions are dense (1, 2, 3, … with no gaps) and become visible in order:
-- an appender reserves positions by updating the single `event_log_head` row,
-- and the row lock it takes is held until its transaction ends. The next
-- appender can only read the head after the previous one has committed (and
-- become visible) or rolled back (and given its positions back). So a reader
-- that has seen position p can never later see a new event below p, and the
-- JetStream relay can keep the stream's sequence equal to the position.

create table event_log_head (
    singleton boolean primary key default true check (singleton),
    position  bigint  not null check (position >= 0)
);
insert into event_log_head (singleton, position) values (true, 0);

create table events (
    position       bigint      primary key check (position > 0),
    id             uuid        not null unique,
    tenant_id      uuid        not null,
    stream_type    text        not null,
    stream_id      uuid        not null,
    stream_version bigint      not null check (stream_version > 0),
    event_type     text        not null,
    schema_version integer     not null check (schema_version > 0),
    occurred_at    timestamptz not null,
    metadata       jsonb       not null,
    data           jsonb       not null,
    unique (stream_id, stream_version)
);

create index events_tenant_position on events (tenant_id, position);

-- Append a batch of appends in one statement (one round trip, one transaction
-- when called outside an explicit one).
--
-- p_batch: a JSON array of appends, each
--   {"tenant_id", "stream_type", "stream_id", "expected": null | <version>,
--    "events": [{"id", "event_type", "schema_version", "occurred_at", "metadata", "data"}, …]}
-- where expected = null appends whatever the stream's version, and 0 means the
-- stream must not exist yet.
--
-- Returns one row per append, in order:
--   outcome 'appended'  : first_position..last_position were written; version is the stream's new version
--   outcome 'duplicate' : every event id was already stored; nothing written (an idempotent retry)
--   outcome 'conflict'  : expected version did not match; nothing written; version is the actual one
-- An append whose events are partly stored is refused as 'conflict' too: it is
-- neither a retry of one append nor a new one.
--
-- All accepted events are written by a single multi-row insert.
create function jeanus_append(p_batch jsonb)
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

        -- One index probe per event id. Written as a join (`e.id in (select …)`),
        -- the plan plpgsql caches while `events` is small hashes the ids and
        -- scans the whole table, so each append costs O(size of the log) from
        -- then on; the `limit 1` keeps the planner from flattening the lateral
        -- lookup back into such a join.
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
        insert into events (position, id, tenant_id, stream_type, stream_id, stream_version,
                            event_type, schema_version, occurred_at, metadata, data)
        select d.first_pos + x.ord - 1, (x.value->>'id')::uuid, (ap->>'tenant_id')::uuid,
               ap->>'stream_type', (ap->>'stream_id')::uuid, d.base_version + x.ord,
               x.value->>'event_type', (x.value->>'schema_version')::integer,
               (x.value->>'occurred_at')::timestamptz, x.value->'metadata', x.value->'data'
          from unnest(acc_idx, acc_pos, acc_ver) as d(idx, first_pos, base_version)
         cross join lateral (select p_batch->d.idx as ap) b
         cross join lateral jsonb_array_elements(b.ap->'events') with ordinality as x(value, ord);

        update event_log_head set position = next_pos - 1 where singleton;
        perform pg_notify('jeanus_events', (next_pos - 1)::text);
    end if;
end;
$$;
