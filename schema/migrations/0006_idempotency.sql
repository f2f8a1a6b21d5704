-- Idempotency keys of the api's POST and PATCH requests (api/src/idempotency.rs).
--
-- One row per (tenant, key). A request claims its row before it does
-- anything, holding it "in flight" until `locked_until`; it then stores its
-- response (status < 500), or releases the row so that a retry runs again.
-- A retry of the same request (same `request_hash`) within 24 hours of
-- `created_at` replays the stored response; another request under the same
-- key is refused. After 24 hours the row is ignored and the next request
-- under its key starts it afresh; a periodic sweep deletes such rows.
--
-- `generation` seeds the ids of the resource and the events the request
-- appends: a retry that takes over a row abandoned in flight (its process
-- crashed, say) keeps the generation, so it derives the same event ids, and
-- the event store turns a second append of them into a no-op.
create table idempotency_keys (
    tenant_id        uuid        not null,
    key              text        not null,
    -- SHA-256 of method, path and body.
    request_hash     bytea       not null,
    generation       uuid        not null,
    -- The claim of the request in flight; a finished row keeps its last owner.
    owner            uuid        not null,
    created_at       timestamptz not null default now(),
    -- In flight until then; null once the response is stored.
    locked_until     timestamptz,
    response_status  smallint,
    -- [[name, value], …]: the headers replayed (content-type, etag, location).
    response_headers jsonb,
    response_body    bytea,
    primary key (tenant_id, key),
    check ((locked_until is null) = (response_status is not null))
);

create index idempotency_keys_created_at on idempotency_keys (created_at);
