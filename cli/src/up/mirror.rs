//! A read-only registry (the distribution API's pull side) serving [`Images`]: the
//! workers' mirror of `docker.io` during `grove up`.

use super::images::Images;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;

fn not_found(what: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "application/json")],
        format!(r#"{{"errors":[{{"code":"{what}_UNKNOWN","message":"not here"}}]}}"#),
    )
        .into_response()
}

async fn serve(State(images): State<Arc<Images>>, Path(rest): Path<String>) -> Response {
    let (repo, kind, reference) = match (rest.rfind("/manifests/"), rest.rfind("/blobs/")) {
        (Some(i), _) => (&rest[..i], "manifest", &rest[i + "/manifests/".len()..]),
        (None, Some(i)) => (&rest[..i], "blob", &rest[i + "/blobs/".len()..]),
        _ => return not_found("NAME"),
    };
    let digest = if reference.starts_with("sha256:") {
        reference.to_owned()
    } else {
        match images.tags.get(&(repo.to_owned(), reference.to_owned())) {
            Some(d) => d.clone(),
            None => return not_found("MANIFEST"),
        }
    };
    let Some(blob) = images.blobs.get(&digest) else {
        return not_found(if kind == "manifest" {
            "MANIFEST"
        } else {
            "BLOB"
        });
    };
    let mut r = blob.data.clone().into_response();
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&blob.media_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&digest) {
        h.insert("docker-content-digest", v);
    }
    r
}

/// Serve `images` on `listener` until the runtime stops.
pub async fn run(listener: tokio::net::TcpListener, images: Images) {
    let app = Router::new()
        .route(
            "/v2/",
            get(|| async { ([("docker-distribution-api-version", "registry/2.0")], "{}") }),
        )
        .route("/v2/{*rest}", get(serve))
        .with_state(Arc::new(images));
    let _ = axum::serve(listener, app).await;
}
