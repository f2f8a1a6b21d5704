//! The one query every list runs: a tenant's live rows of one read model,
//! filtered, newest first by `(created_at, id)`, one page of them together
//! with the count of every row that matches — one statement, so that the
//! page and its total come from the same snapshot, in one round trip.
//!
//! Rows are read as the shared fold's state (`to_jsonb(row)` into
//! `schema::resources::*`), the same way the projector writes them.

use serde::de::DeserializeOwned;
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use super::params::like_prefix;

/// One condition beyond the tenant and `deleted_at is null`.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// `column = value`, for an enumerated text column (`stage`, `status`).
    Text { column: &'static str, value: String },
    /// `column = value`.
    Uuid { column: &'static str, value: Uuid },
    /// `column >= at`.
    Since {
        column: &'static str,
        at: chrono::DateTime<chrono::Utc>,
    },
    /// `lower(column) like lower(prefix) || '%'` on any of `columns`: a
    /// case-insensitive prefix match served by the `lower(…)
    /// text_pattern_ops` indexes. `prefix` is matched literally.
    Prefix {
        columns: &'static [&'static str],
        prefix: String,
    },
}

impl Filter {
    /// The `q` filter on `columns`, when `q` was given.
    pub fn prefix(columns: &'static [&'static str], q: Option<String>) -> Option<Self> {
        q.map(|prefix| Self::Prefix { columns, prefix })
    }
}

/// A list request against one read model.
#[derive(Debug, Clone, PartialEq)]
pub struct List {
    /// A table of `schema/migrations/0005_resources.sql`; never user input.
    pub table: &'static str,
    pub tenant_id: Uuid,
    pub filters: Vec<Filter>,
    pub limit: i64,
    pub offset: i64,
}

/// One page and the number of rows matching the filters, on every page.
#[derive(Debug)]
pub struct Found<T> {
    pub rows: Vec<T>,
    pub total: i64,
}

impl List {
    /// Runs the query; `T` is the table's fold state.
    pub async fn fetch<T>(&self, db: &PgPool) -> Result<Found<T>, sqlx::Error>
    where
        T: DeserializeOwned + Send + Unpin + 'static,
    {
        let mut query = self.query();
        let answer: Vec<(i64, Option<Json<T>>)> = query.build_query_as().fetch_all(db).await?;
        let total = answer.first().map_or(0, |(total, _)| *total);
        let rows = answer
            .into_iter()
            .filter_map(|(_, row)| row.map(|Json(row)| row))
            .collect();
        Ok(Found { rows, total })
    }

    /// The statement and its arguments: the count, left-joined to the page
    /// so that an empty page still answers the total. The text depends only
    /// on the table and which filters are present, never on their values,
    /// so each shape is prepared once per connection.
    ///
    /// Two shapes. When one index serves the filters in list order (none, a
    /// stage or a status, a customer, a date, or one of those with a date),
    /// the count scans that index and the page reads its first rows in
    /// order. Otherwise (a `q`, or two equality filters) the planner may
    /// still walk the list index in order and filter as it goes, which
    /// visits every row of the tenant when the matches are rare; so the
    /// matches are collected once (`with m as materialized`, through the
    /// prefix indexes), counted, sorted for the page, and only the page's
    /// rows are read in full. Either way the cost follows the number of
    /// matches, not the size of the tenant.
    pub fn query(&self) -> QueryBuilder<'_, Postgres> {
        let equalities = self
            .filters
            .iter()
            .filter(|f| matches!(f, Filter::Text { .. } | Filter::Uuid { .. }))
            .count();
        let collect = equalities > 1
            || self
                .filters
                .iter()
                .any(|f| matches!(f, Filter::Prefix { .. }));
        let mut q = QueryBuilder::new("");
        if collect {
            q.push("with m as materialized (select t.id, t.created_at from ");
            self.push_from_where(&mut q);
            q.push(
                ") select c.total, p.row from (select count(*) as total from m) c \
                 left join lateral (select to_jsonb(t) as row, t.created_at, t.id \
                 from (select m.id from m order by m.created_at desc, m.id desc limit ",
            );
            self.push_page(&mut q);
            q.push(format_args!(
                ") k join {} t on t.id = k.id) p on true",
                self.table
            ));
        } else {
            q.push("select c.total, p.row from (select count(*) as total from ");
            self.push_from_where(&mut q);
            q.push(") c left join lateral (select to_jsonb(t) as row, t.created_at, t.id from ");
            self.push_from_where(&mut q);
            q.push(" order by t.created_at desc, t.id desc limit ");
            self.push_page(&mut q);
            q.push(") p on true");
        }
        q.push(" order by p.created_at desc, p.id desc");
        q
    }

    /// `<limit> offset <offset>`, after a `limit `.
    fn push_page<'a>(&'a self, q: &mut QueryBuilder<'a, Postgres>) {
        q.push_bind(self.limit);
        q.push(" offset ");
        q.push_bind(self.offset);
    }

    fn push_from_where<'a>(&'a self, q: &mut QueryBuilder<'a, Postgres>) {
        q.push(self.table);
        q.push(" t where t.tenant_id = ");
        q.push_bind(self.tenant_id);
        q.push(" and t.deleted_at is null");
        for filter in &self.filters {
            match filter {
                Filter::Text { column, value } => {
                    q.push(format_args!(" and t.{column} = "));
                    q.push_bind(value.as_str());
                }
                Filter::Uuid { column, value } => {
                    q.push(format_args!(" and t.{column} = "));
                    q.push_bind(*value);
                }
                Filter::Since { column, at } => {
                    q.push(format_args!(" and t.{column} >= "));
                    q.push_bind(*at);
                }
                Filter::Prefix { columns, prefix } => {
                    q.push(" and (");
                    for (i, column) in columns.iter().enumerate() {
                        if i > 0 {
                            q.push(" or ");
                        }
                        // Each alternative matches its own index, as the
                        // planner's prefix rewrite needs the pattern
                        // constant: it is, in the custom plan of each call.
                        q.push(format_args!("lower(t.{column}) like lower("));
                        q.push_bind(like_prefix(prefix));
                        q.push(") || '%'");
                    }
                    q.push(")");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_indexed_filter_counts_and_pages_on_its_index() {
        let list = List {
            table: "leads",
            tenant_id: Uuid::nil(),
            filters: vec![Filter::Text {
                column: "stage",
                value: "won".into(),
            }],
            limit: 50,
            offset: 0,
        };
        let sql = list.query().into_sql();
        let where_ = "leads t where t.tenant_id = $1 and t.deleted_at is null and t.stage = $2";
        assert!(
            sql.starts_with(&format!(
                "select c.total, p.row from (select count(*) as total from {where_})"
            )),
            "{sql}"
        );
        assert!(
            sql.contains(
                "from leads t where t.tenant_id = $3 and t.deleted_at is null and t.stage = $4 \
                 order by t.created_at desc, t.id desc limit $5 offset $6"
            ),
            "{sql}"
        );
    }

    #[test]
    fn a_prefix_collects_the_matches_once() {
        let list = List {
            table: "leads",
            tenant_id: Uuid::nil(),
            filters: vec![Filter::Prefix {
                columns: &["name", "email"],
                prefix: "50%".into(),
            }],
            limit: 50,
            offset: 0,
        };
        let sql = list.query().into_sql();
        let where_ = "leads t where t.tenant_id = $1 and t.deleted_at is null \
                      and (lower(t.name) like lower($2) || '%' or lower(t.email) like lower($3) || '%')";
        assert!(
            sql.starts_with(&format!(
                "with m as materialized (select t.id, t.created_at from {where_})"
            )),
            "{sql}"
        );
        assert!(
            sql.contains("limit $4 offset $5) k join leads t on t.id = k.id"),
            "{sql}"
        );
        assert!(
            sql.ends_with("order by p.created_at desc, p.id desc"),
            "{sql}"
        );
    }
}
