-- The `webhook_endpoints` read model, built by the projector
-- (projector/src/projections/webhook_endpoints.rs) from the WebhookEndpoint*
-- events with the shared fold (schema::webhook_endpoints). The api lists and
-- shows subscriptions from it; the dispatcher matches events against it.
--
-- `secrets` holds sealed secrets only (schema::sealing, under
-- JEANUS_SECRET_KEY), never plaintext: [{"sealed": "v1.…", "expires_at":
-- null | timestamp}], the current one first; a secret signs while its
-- `expires_at` is null or in the future. Deleting is soft: `deleted_at` is
-- set, and nothing is delivered to the endpoint any more.

create table webhook_endpoints (
    id              uuid        primary key,
    tenant_id       uuid        not null,
    url             text        not null,
    -- Public event types: lead.created, lead.stage_changed, …
    events          text[]      not null,
    description     text,
    enabled         boolean     not null,
    disabled_reason text,
    secrets         jsonb       not null,
    version         bigint      not null,
    created_at      timestamptz not null,
    updated_at      timestamptz not null,
    deleted_at      timestamptz
);

-- The list (newest first) and the dispatcher's match: a tenant's live
-- endpoints subscribed to a type (`events @> array[$type]`).
create index webhook_endpoints_list on webhook_endpoints (tenant_id, created_at desc, id desc)
    where deleted_at is null;
create index webhook_endpoints_events on webhook_endpoints using gin (events)
    where deleted_at is null and enabled;
