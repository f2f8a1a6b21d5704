//! The public JSON objects of the v1 resources, one per resource, as every
//! endpoint that answers one renders it (the lists, and GET, POST and PATCH
//! of one): built from the shared fold's state (`schema::resources`), minus
//! the bookkeeping a client does not see (tenant, version — the ETag carries
//! it — and deletion). Every field is always present; an absent optional
//! value is `null`. Money is an integer count of the currency's minor unit.

use chrono::{DateTime, Utc};
use schema::events::{LeadStage, OrderStatus};
use schema::resources::{Customer, Lead, Order, Product};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[schema(as = Customer)]
pub struct CustomerView {
    pub id: Uuid,
    pub name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub company: Option<String>,
    pub notes: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Customer> for CustomerView {
    fn from(c: Customer) -> Self {
        Self {
            id: c.meta.id,
            name: c.name,
            email: c.email,
            phone: c.phone,
            company: c.company,
            notes: c.notes,
            created_at: c.meta.created_at,
            updated_at: c.meta.updated_at,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[schema(as = Product)]
pub struct ProductView {
    pub id: Uuid,
    pub name: String,
    pub sku: Option<String>,
    pub description: Option<String>,
    /// In minor units of `currency` (cents for USD); an integer ≥ 0.
    pub price: Option<i64>,
    /// ISO 4217 code, e.g. `USD`.
    pub currency: Option<String>,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Product> for ProductView {
    fn from(p: Product) -> Self {
        Self {
            id: p.meta.id,
            name: p.name,
            sku: p.sku,
            description: p.description,
            price: p.price,
            currency: p.currency,
            active: p.active,
            created_at: p.meta.created_at,
            updated_at: p.meta.updated_at,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[schema(as = Lead)]
pub struct LeadView {
    pub id: Uuid,
    pub name: String,
    pub company: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    /// `new`, `contacted`, `qualified`, `meeting_booked`, `proposal`, `won` or `lost`.
    #[schema(value_type = String, example = "new")]
    pub stage: LeadStage,
    /// In minor units (cents); an integer ≥ 0.
    pub estimated_value: Option<i64>,
    /// Percent, 0 to 100.
    pub probability: Option<i32>,
    pub source: String,
    pub notes: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Lead> for LeadView {
    fn from(l: Lead) -> Self {
        Self {
            id: l.meta.id,
            name: l.name,
            company: l.company,
            email: l.email,
            phone: l.phone,
            stage: l.stage,
            estimated_value: l.estimated_value,
            probability: l.probability,
            source: l.source,
            notes: l.notes,
            created_at: l.meta.created_at,
            updated_at: l.meta.updated_at,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[schema(as = OrderItem)]
pub struct OrderItemView {
    pub product_id: Uuid,
    pub quantity: i64,
    /// In minor units of the order's currency.
    pub unit_price: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[schema(as = Order)]
pub struct OrderView {
    pub id: Uuid,
    pub customer_id: Uuid,
    /// `open`, `delivered` or `cancelled`.
    #[schema(value_type = String, example = "open")]
    pub status: OrderStatus,
    /// ISO 4217 code, e.g. `USD`.
    pub currency: Option<String>,
    pub items: Vec<OrderItemView>,
    /// In minor units of `currency`; the sum of the items when they are given.
    pub total: Option<i64>,
    pub notes: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Order> for OrderView {
    fn from(o: Order) -> Self {
        Self {
            id: o.meta.id,
            customer_id: o.customer_id,
            status: o.status,
            currency: o.currency,
            items: o
                .items
                .into_iter()
                .map(|i| OrderItemView {
                    product_id: i.product_id,
                    quantity: i.quantity,
                    unit_price: i.unit_price,
                })
                .collect(),
            total: o.total,
            notes: o.notes,
            created_at: o.meta.created_at,
            updated_at: o.meta.updated_at,
        }
    }
}
