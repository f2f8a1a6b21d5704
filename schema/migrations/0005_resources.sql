-- The v1 resources' read models, built only by the projector
-- (projector/src/projections/{customers,products,leads,orders}.rs) from the
-- resources' events. `id` is the resource's stream id; `version` its stream
-- version after the last applied event (the api's ETag); money is an integer
-- count of the currency's minor unit. Deleting is soft: `deleted_at` is set
-- and the row leaves every list and lookup.
--
-- Lists are newest first by (created_at, id); `q` is a case-insensitive
-- prefix match, served by the lower(...) text_pattern_ops indexes.

create table customers (
    id         uuid        primary key,
    tenant_id  uuid        not null,
    name       text        not null,
    email      text,
    phone      text,
    company    text,
    notes      text,
    version    bigint      not null,
    created_at timestamptz not null,
    updated_at timestamptz not null,
    deleted_at timestamptz
);
create index customers_list on customers (tenant_id, created_at desc, id desc) where deleted_at is null;
create index customers_name_prefix on customers (tenant_id, lower(name) text_pattern_ops) where deleted_at is null;
create index customers_email_prefix on customers (tenant_id, lower(email) text_pattern_ops) where deleted_at is null;

create table products (
    id          uuid        primary key,
    tenant_id   uuid        not null,
    name        text        not null,
    sku         text,
    description text,
    price       bigint      check (price >= 0),
    currency    text,
    active      boolean     not null,
    version     bigint      not null,
    created_at  timestamptz not null,
    updated_at  timestamptz not null,
    deleted_at  timestamptz
);
create index products_list on products (tenant_id, created_at desc, id desc) where deleted_at is null;
create index products_name_prefix on products (tenant_id, lower(name) text_pattern_ops) where deleted_at is null;
create index products_sku_prefix on products (tenant_id, lower(sku) text_pattern_ops) where deleted_at is null;

create table leads (
    id              uuid        primary key,
    tenant_id       uuid        not null,
    name            text        not null,
    company         text,
    email           text,
    phone           text,
    -- new | contacted | qualified | meeting_booked | proposal | won | lost
    stage           text        not null,
    estimated_value bigint      check (estimated_value >= 0),
    probability     integer     check (probability between 0 and 100),
    source          text        not null,
    notes           text,
    version         bigint      not null,
    created_at      timestamptz not null,
    updated_at      timestamptz not null,
    deleted_at      timestamptz
);
create index leads_list on leads (tenant_id, created_at desc, id desc) where deleted_at is null;
create index leads_stage_list on leads (tenant_id, stage, created_at desc, id desc) where deleted_at is null;
create index leads_name_prefix on leads (tenant_id, lower(name) text_pattern_ops) where deleted_at is null;
create index leads_email_prefix on leads (tenant_id, lower(email) text_pattern_ops) where deleted_at is null;

create table orders (
    id          uuid        primary key,
    tenant_id   uuid        not null,
    customer_id uuid        not null,
    -- open | delivered | cancelled
    status      text        not null,
    currency    text,
    -- [{product_id, quantity, unit_price}]
    items       jsonb       not null default '[]',
    total       bigint      check (total >= 0),
    notes       text,
    version     bigint      not null,
    created_at  timestamptz not null,
    updated_at  timestamptz not null,
    deleted_at  timestamptz
);
create index orders_list on orders (tenant_id, created_at desc, id desc) where deleted_at is null;
create index orders_status_list on orders (tenant_id, status, created_at desc, id desc) where deleted_at is null;
create index orders_customer_list on orders (tenant_id, customer_id, created_at desc, id desc) where deleted_at is null;
