//! The HTTP handlers of a v1 resource, generated once for all four by
//! [`resource_handlers!`]: `list`, `create`, `find`, `update` and `delete`,
//! each a thin call of the generic command (`crate::resources::{create,
//! find, update, delete}`, `crate::lists::list`) with its OpenAPI
//! annotation. utoipa's `#[utoipa::path]` documents a concrete function, not
//! an instance of a generic one, hence a macro rather than generic handlers.
//! What is particular to a resource stays in its own module: its
//! `Resource` and `Listed` impls and its documented bodies.

/// Generates, in the calling module, the handlers `list`, `create`, `find`,
/// `update` and `delete` of one resource, and their OpenAPI annotations.
///
/// - `resource`: the folded state implementing `Resource` and `Listed`;
/// - `view`, `new`, `patch`, `query`: the types documenting its response,
///   its create body, its merge patch and its list parameters;
/// - `collection`: the path segment and tag (`"customers"`); `one`: a
///   singular noun (`"customer"`); `a_one`: with its article (`"a customer"`).
///
/// The routes themselves are declared in `crate::routes::resources`, with
/// literal paths.
macro_rules! resource_handlers {
    (
        resource: $resource:ident,
        view: $view:ident,
        new: $new:ident,
        patch: $patch:ident,
        query: $query:ident,
        collection: $collection:tt,
        one: $one:tt,
        a_one: $a_one:tt $(,)?
    ) => {
        #[utoipa::path(
            get,
            path = concat!("/api/v1/", $collection),
            tag = $collection,
            summary = concat!("List ", $collection, "."),
            params($query),
            responses(
                (status = 200, description = concat!("A page of ", $collection, ", newest first"),
                 body = $crate::lists::Page<$view>),
                (status = 400, description = "`invalid_param`: a parameter is unknown, repeated, malformed or out of range; the message names it"),
                (status = 401, description = "No valid API key"),
                (status = 403, description = "`missing_scope`: the key lacks the read scope"),
            )
        )]
        pub async fn list(
            principal: $crate::auth::Principal,
            ::axum::extract::State(state): ::axum::extract::State<$crate::state::AppState>,
            raw: $crate::lists::params::RawParams,
        ) -> $crate::error::ApiResult<$crate::extract::AppJson<$crate::lists::Page<$view>>> {
            $crate::lists::list::<$resource>(&state, &principal, raw).await
        }

        #[utoipa::path(
            post,
            path = concat!("/api/v1/", $collection),
            tag = $collection,
            summary = concat!("Create ", $a_one, "."),
            params($crate::resources::docs::IdempotencyHeader),
            request_body(content = $new, content_type = "application/json"),
            responses(
                (status = 201, description = concat!("The ", $one, " created"),
                 body = $crate::tenancy::Data<$view>,
                 headers(("ETag" = String, description = "The version: \"1\""), ("Location" = String))),
                $crate::resources::docs::CreateErrors,
            )
        )]
        pub async fn create(
            $crate::resources::Writer(caller): $crate::resources::Writer,
            ::axum::extract::State(state): ::axum::extract::State<$crate::state::AppState>,
            ids: $crate::idempotency::EventIds,
            $crate::extract::AppJson(body): $crate::extract::AppJson<$crate::resources::Body>,
        ) -> $crate::error::ApiResult<::axum::response::Response> {
            $crate::resources::create::<$resource>(&state, &caller, &ids, body).await
        }

        #[utoipa::path(
            get,
            path = concat!("/api/v1/", $collection, "/{id}"),
            tag = $collection,
            summary = concat!("Get ", $a_one, "."),
            params(
                ("id" = Uuid, Path, description = "404 unless a live resource of this tenant"),
            ),
            responses(
                (status = 200, description = concat!("The ", $one),
                 body = $crate::tenancy::Data<$view>,
                 headers(("ETag" = String, description = "The version, for If-Match"))),
                $crate::resources::docs::FindErrors,
            )
        )]
        pub async fn find(
            $crate::resources::Reader(caller): $crate::resources::Reader,
            ::axum::extract::State(state): ::axum::extract::State<$crate::state::AppState>,
            ::axum::extract::Path(id): ::axum::extract::Path<String>,
        ) -> $crate::error::ApiResult<::axum::response::Response> {
            $crate::resources::find::<$resource>(&state, &caller, &id).await
        }

        #[utoipa::path(
            patch,
            path = concat!("/api/v1/", $collection, "/{id}"),
            tag = $collection,
            summary = concat!("Update ", $a_one, " (JSON merge patch)."),
            params(
                ("id" = Uuid, Path, description = "404 unless a live resource of this tenant"),
                $crate::resources::docs::IfMatchHeader,
                $crate::resources::docs::IdempotencyHeader,
            ),
            request_body(content = $patch, content_type = "application/merge-patch+json"),
            responses(
                (status = 200, description = concat!("The ", $one, " as it is now"),
                 body = $crate::tenancy::Data<$view>,
                 headers(("ETag" = String))),
                $crate::resources::docs::PatchErrors,
            )
        )]
        pub async fn update(
            $crate::resources::Writer(caller): $crate::resources::Writer,
            ::axum::extract::State(state): ::axum::extract::State<$crate::state::AppState>,
            ids: $crate::idempotency::EventIds,
            if_match: $crate::resources::IfMatch,
            ::axum::extract::Path(id): ::axum::extract::Path<String>,
            $crate::extract::AppJson(body): $crate::extract::AppJson<$crate::resources::Body>,
        ) -> $crate::error::ApiResult<::axum::response::Response> {
            $crate::resources::update::<$resource>(&state, &caller, &ids, &id, &if_match, body)
                .await
        }

        #[utoipa::path(
            delete,
            path = concat!("/api/v1/", $collection, "/{id}"),
            tag = $collection,
            summary = concat!("Delete ", $a_one, " (soft: it leaves every list and lookup)."),
            params(
                ("id" = Uuid, Path, description = "404 unless a live resource of this tenant"),
                $crate::resources::docs::IfMatchHeader,
            ),
            responses(
                (status = 204, description = "Deleted"),
                $crate::resources::docs::DeleteErrors,
            )
        )]
        pub async fn delete(
            $crate::resources::Writer(caller): $crate::resources::Writer,
            ::axum::extract::State(state): ::axum::extract::State<$crate::state::AppState>,
            ids: $crate::idempotency::EventIds,
            if_match: $crate::resources::IfMatch,
            ::axum::extract::Path(id): ::axum::extract::Path<String>,
        ) -> $crate::error::ApiResult<::axum::http::StatusCode> {
            $crate::resources::delete::<$resource>(&state, &caller, &ids, &id, &if_match).await
        }
    };
}

pub(crate) use resource_handlers;
