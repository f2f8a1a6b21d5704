-- The audit log with one index instead of two, second step (0021 built the
-- one that stays). Every request inserts a row before its response leaves,
-- so every index on the table is paid for on the request path: the primary
-- key on `id` cost ≈ 8,700 instructions per row, a third of the insert,
-- and no query reads by `id`; the tenant index is now 0021's, unique. A
-- batch of 60 entries: 2.64 million instructions with the old two indexes,
-- 2.09 million with the one. Both drops are brief (no scan), each waiting
-- only for the writes in flight.
drop index audit_log_tenant_at;
alter table audit_log drop constraint audit_log_pkey;
