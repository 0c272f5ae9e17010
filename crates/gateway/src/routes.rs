//! The gateway's routes (`docs/http.md`, `docs/openapi.json`): the JSON API and
//! exposition in [`crate::http`], event streams in [`crate::events`], calls that open
//! dialogs in [`crate::calls`].

use std::sync::Arc;

use axum::Router;
use axum::routing::get;

use crate::http::{
    Gateway, classes, delete, describe, healthz, instances, not_found, providers, put, query_get,
    query_post, readyz, scrape, status,
};
use crate::{calls, events};

/// The gateway's routes.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(scrape))
        .route("/v1/status", get(status))
        .route("/v1/providers", get(providers))
        .route("/v1/classes", get(classes))
        .route("/v1/classes/{class}", get(describe))
        .route(
            "/v1/classes/{class}/instances",
            get(instances).put(put).delete(delete),
        )
        .route(
            "/v1/classes/{class}/methods/{method}",
            axum::routing::post(calls::call),
        )
        .route("/v1/classes/{class}/events", get(events::events))
        .route("/v1/calls/{id}", get(calls::get_call))
        .route(
            "/v1/calls/{id}/dialogs/{handle}",
            axum::routing::post(calls::answer_dialog).delete(calls::close_dialog),
        )
        .route("/v1/query", get(query_get).post(query_post))
        .fallback(not_found)
        .with_state(gateway)
}
