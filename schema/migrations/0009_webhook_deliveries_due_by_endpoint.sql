-- The dispatcher claims each endpoint's oldest due deliveries, as many as
-- the endpoint has free slots, so that one endpoint's backlog (hanging,
-- failing) never hides another's due deliveries: one index probe per endpoint.
create index webhook_deliveries_due_by_endpoint
    on webhook_deliveries (endpoint_id, next_attempt_at)
    where status = 'pending';
