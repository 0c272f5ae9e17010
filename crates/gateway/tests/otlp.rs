//! The OTLP exporter against a test receiver that decodes what it was sent: a real
//! OTLP/HTTP endpoint on loopback (axum, as a collector's `otlphttp` receiver would be),
//! a host with the system provider, and the gateway pushing every 200 ms.

#![cfg(feature = "otlp")]

use std::time::Duration;

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::metrics::v1::{AggregationTemporality, Metric, metric};
use prost::Message;
use purveyor_gateway::{GatewayConfig, OtlpConfig};
use purveyor_host::HostConfig;
use purveyor_protocol::HostMode;
use tokio::sync::mpsc;

fn find<'a>(request: &'a ExportMetricsServiceRequest, name: &str) -> &'a Metric {
    request.resource_metrics[0].scope_metrics[0]
        .metrics
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no metric {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_decode_as_otlp_metrics_at_the_interval() {
    // The receiver: every body it gets, with its content type.
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, Bytes)>();
    let receiver = axum::Router::new().route(
        "/v1/metrics",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: Bytes| {
            let tx = tx.clone();
            async move {
                let kind = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let _ = tx.send((kind, body));
                ""
            }
        }),
    );
    let collector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/v1/metrics", collector.local_addr().unwrap());
    let receiving = tokio::spawn(async move { axum::serve(collector, receiver).await });

    let providers = tempfile::tempdir().unwrap();
    let host = purveyor_client::host_with(HostConfig::with_dirs(
        HostMode::Daemon,
        vec![providers.path().to_path_buf()],
    ));
    let config = GatewayConfig {
        otlp: Some(OtlpConfig {
            endpoint,
            interval: Duration::from_millis(200),
        }),
        ..GatewayConfig::default()
    };
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = std::sync::Arc::new(purveyor_host::Current::new(std::sync::Arc::new(config)));
    let gateway = tokio::spawn(purveyor_gateway::serve(http, host, config, async move {
        let _ = stopped.await;
    }));

    let mut pushes = Vec::new();
    while pushes.len() < 2 {
        let (kind, body) = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("a push within 20 s")
            .expect("the receiver runs");
        assert_eq!(kind, "application/x-protobuf");
        pushes.push(ExportMetricsServiceRequest::decode(body).expect("a valid OTLP request"));
    }
    let (first, second) = (&pushes[0], &pushes[1]);

    let resource = first.resource_metrics[0].resource.as_ref().unwrap();
    let service = resource
        .attributes
        .iter()
        .find(|a| a.key == "service.name")
        .and_then(|a| a.value.as_ref()?.value.as_ref());
    assert_eq!(
        service,
        Some(&any_value::Value::StringValue("purveyor".into()))
    );

    // A counter: cumulative, monotonic, labelled by its key, in seconds.
    let cpu = find(first, "system_cpu_user");
    assert_eq!(cpu.unit, "s");
    let Some(metric::Data::Sum(sum)) = &cpu.data else {
        panic!("system_cpu_user is not a sum: {cpu:?}");
    };
    assert!(sum.is_monotonic);
    assert_eq!(
        sum.aggregation_temporality,
        AggregationTemporality::Cumulative as i32
    );
    let total = sum
        .data_points
        .iter()
        .find(|p| {
            p.attributes.iter().any(|a| {
                a.key == "cpu"
                    && a.value.as_ref().and_then(|v| v.value.as_ref())
                        == Some(&any_value::Value::StringValue("total".into()))
            })
        })
        .expect("a cpu=total point");
    assert!(total.start_time_unix_nano > 0 && total.time_unix_nano > total.start_time_unix_nano);

    // A gauge, in bytes.
    let memory = find(first, "system_memory_total");
    assert_eq!(memory.unit, "By");
    assert!(matches!(memory.data, Some(metric::Data::Gauge(_))));

    // The second push is later, with the same start for counters.
    let Some(metric::Data::Sum(later)) = &find(second, "system_cpu_user").data else {
        panic!("not a sum");
    };
    assert_eq!(
        later.data_points[0].start_time_unix_nano,
        sum.data_points[0].start_time_unix_nano
    );
    assert!(later.data_points[0].time_unix_nano > sum.data_points[0].time_unix_nano);

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), gateway)
        .await
        .expect("the gateway stops")
        .unwrap()
        .unwrap();
    receiving.abort();
}
