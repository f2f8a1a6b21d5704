-- API keys, from KeyMinted and KeyRevoked: what the api's authentication
-- looks up (by hash) and what the key listings show. Written only by the
-- projector (`projector/src/projections/api_keys.rs`); `id` is the key's
-- stream id, `tenant_id` the event's tenant.
--
-- Neither the key nor any part of its secret beyond the displayable start is
-- here: `key_hash` is the lower-case hex SHA-256 of the whole key.
create table api_keys (
    id                    uuid        primary key,
    tenant_id             uuid        not null,
    label                 text        not null,
    -- 'read', 'write', 'admin' (schema::events::Scope, snake_case).
    scopes                text[]      not null,
    key_hash              text        not null unique,
    -- The prefix and first characters of the secret, e.g. 'jns_live_a1b2'.
    key_start             text        not null,
    expires_at            timestamptz,
    -- CIDRs as text ('10.0.0.0/8', '2001:db8::/32'); empty means any address.
    allowed_ips           text[]      not null default '{}',
    rate_limit_per_minute integer     not null check (rate_limit_per_minute > 0),
    created_at            timestamptz not null,
    -- Soft revocation: the row (and the key's audit history) stays.
    revoked_at            timestamptz
);

-- A tenant's keys, newest first.
create index api_keys_tenant_created on api_keys (tenant_id, created_at);
