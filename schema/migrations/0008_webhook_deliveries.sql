-- The dispatcher's operational state: which events are owed to which webhook
-- endpoints, and every attempt made to deliver them. These rows are neither
-- events nor a projection: the dispatcher writes them as it works (the
-- intake creates deliveries, the workers record attempts), they are not
-- rebuilt from the log, and the api only reads them (the delivery log) or
-- makes a delivery due again (retry, recover).

-- How far the dispatcher's intake has read the event log. Its own table, not
-- a row of projector_checkpoint: jeanus_projected_position() must not wait
-- for the dispatcher.
create table dispatcher_checkpoint (
    name     text   primary key,
    position bigint not null check (position >= 0)
);

-- One event owed to one endpoint. `payload` is the exact body, fixed when the
-- delivery is created, so that every attempt sends identical bytes.
-- `next_attempt_at` is when a worker may next take it; a worker that takes
-- it pushes it forward by a lease first, so a crashed worker's delivery is
-- taken again once the lease runs out.
create table webhook_deliveries (
    id              uuid        primary key,
    tenant_id       uuid        not null,
    endpoint_id     uuid        not null,
    event_id        uuid        not null,
    event_position  bigint      not null,
    event_type      text        not null,
    payload         jsonb       not null,
    status          text        not null default 'pending'
                    check (status in ('pending', 'delivered', 'failed', 'cancelled')),
    attempts        int         not null default 0,
    next_attempt_at timestamptz not null,
    last_attempt_at timestamptz,
    created_at      timestamptz not null default now(),
    unique (endpoint_id, event_id)
);

-- What the workers look for: due pending deliveries, oldest first.
create index webhook_deliveries_due on webhook_deliveries (next_attempt_at)
    where status = 'pending';
-- The delivery log and recover, by endpoint and time.
create index webhook_deliveries_by_endpoint on webhook_deliveries (endpoint_id, created_at);

-- One HTTP attempt (or a refusal to make one). `error_class` is null for a 2xx
-- answer; `http` for any other answer (a redirect included), with its status
-- code; otherwise what went wrong before an answer came.
create table webhook_attempts (
    id               uuid        primary key,
    delivery_id      uuid        not null references webhook_deliveries (id) on delete cascade,
    endpoint_id      uuid        not null,
    tenant_id        uuid        not null,
    at               timestamptz not null,
    status_code      int,
    latency_ms       int         not null,
    error_class      text
                     check (error_class in ('timeout', 'connect', 'dns', 'http', 'blocked')),
    response_excerpt text
);

create index webhook_attempts_by_delivery on webhook_attempts (delivery_id, at);
create index webhook_attempts_by_endpoint on webhook_attempts (endpoint_id, at);
