-- The projector's progress, and the first read model it builds from the event log.

-- One row per projection (read model): the position of the last event applied
-- to it. A row is only ever written in the same transaction as the read-model
-- rows it accounts for, so a read model and its checkpoint never disagree.
-- `name` is the projection's stable name in the projector
-- (`projector::projections::Projection::name`); a migration that drops a
-- read model deletes its row too, or `jeanus_projected_position` stalls on it.
create table projector_checkpoint (
    name     text   primary key,
    position bigint not null check (position >= 0)
);

-- The position through which every read model is up to date: a read that must
-- see a write at position p waits until this is >= p. The projector also
-- sends it, as text, on the channel `jeanus_projected` when each of its
-- transactions commits, so that waiters can LISTEN instead of polling.
create function jeanus_projected_position()
returns bigint
language sql
stable
as $$
    select coalesce(min(position), 0) from projector_checkpoint
$$;

-- Workspaces, from TenantCreated. `id` is the tenant id (the event's stream id).
create table tenants (
    id         uuid        primary key,
    name       text        not null,
    created_at timestamptz not null
);
