-- An event's webhook body, stored once however many endpoints it goes to.
-- Until now each delivery row carried its own copy (`payload`): an event sent
-- to 100 endpoints wrote, indexed and WAL-logged its ~1 KiB body 100 times,
-- and again with every update of the row (the lease, each attempt). Now the
-- intake writes one body per event here and deliveries refer to it by their
-- `event_id`, so fan-out writes ids, not bodies.
--
-- `body` is the exact text sent (not jsonb, which would reorder keys and
-- make PostgreSQL re-print it): every attempt and every endpoint sends these
-- bytes, and the dispatcher neither parses nor re-serialises them.
--
-- Expand and contract: `webhook_deliveries.payload` stays, nullable, for the
-- deliveries created before this migration (the dispatcher sends a
-- delivery's own payload when it has one). A later migration may drop it
-- once no pending delivery holds one.
create table webhook_bodies (
    event_id   uuid        primary key,
    body       text        not null,
    created_at timestamptz not null default now()
);

alter table webhook_deliveries alter column payload drop not null;
