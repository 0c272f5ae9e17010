//! `docs/openapi.json` stays true: every route and method it documents is served (not the
//! fallback's 404, not 405), by a gateway on an embedded host.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use purveyor_gateway::{Gateway, GatewayConfig};
use purveyor_host::HostConfig;
use purveyor_protocol::HostMode;
use tower::ServiceExt;

#[tokio::test]
async fn every_documented_route_is_served() {
    let doc: serde_json::Value =
        serde_json::from_str(include_str!("../../../docs/openapi.json")).unwrap();
    let providers = tempfile::tempdir().unwrap();
    let host = purveyor_client::host_with(HostConfig::with_dirs(
        HostMode::Embedded,
        vec![providers.path().to_path_buf()],
    ));
    let router = purveyor_gateway::router(std::sync::Arc::new(Gateway::new(
        host,
        std::sync::Arc::new(purveyor_host::Current::new(std::sync::Arc::new(
            GatewayConfig::default(),
        ))),
    )));
    let paths = doc["paths"].as_object().unwrap();
    let mut checked = 0;
    for (path, methods) in paths {
        for method in methods.as_object().unwrap().keys() {
            let uri = path
                .replace("{class}", "system.cpu")
                .replace("{method}", "nothing");
            let request = Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(&uri)
                .body(Body::empty())
                .unwrap();
            let response = router.clone().oneshot(request).await.unwrap();
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap();
            let body = String::from_utf8_lossy(&body);
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
            assert!(!body.contains("no such route"), "{method} {uri}: {body}");
            checked += 1;
        }
    }
    // 13 paths; /v1/classes/{class}/instances has 3 methods, /v1/query and
    // /v1/calls/{id}/dialogs/{handle} 2.
    assert_eq!(checked, 17);
}
