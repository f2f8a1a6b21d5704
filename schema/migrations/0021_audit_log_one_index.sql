-- no-transaction
-- The audit log with one index instead of two (BENCHMARKS.md, "auth",
-- session 9), first step: the index the reads use (newest first per tenant)
-- again, unique, so that it can also refuse a row written twice (the audit
-- writer's retry after a commit whose answer was lost: `on conflict
-- (tenant_id, at, id) do nothing`), the untenanted rows included (`nulls
-- not distinct`, PostgreSQL 15 or later). 0022 then drops the two indexes
-- it replaces.
--
-- Built concurrently, outside a transaction (the first line above), because
-- every request writes an audit row before it is answered: a plain
-- `create index` would hold those writes, and so every request, for as long
-- as the build of a large log takes. Should the build fail half-way, it
-- leaves an invalid index behind: drop `audit_log_tenant_at_id` and migrate
-- again.
create unique index concurrently audit_log_tenant_at_id
    on audit_log (tenant_id, at desc, id desc) nulls not distinct;
