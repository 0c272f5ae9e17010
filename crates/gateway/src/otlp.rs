//! OTLP export (cargo feature `otlp`): every `interval`, the same metrics as `/metrics`
//! ([`crate::metrics::gather`], as the anonymous identity) are pushed to an OpenTelemetry
//! collector as one `ExportMetricsServiceRequest`, protobuf over HTTP/1.1
//! (`POST /v1/metrics`, `Content-Type: application/x-protobuf`: OTLP/HTTP).
//!
//! Mapping: a counter family is a cumulative, monotonic `Sum` whose start time is when the
//! exporter started; a gauge family is a `Gauge`. The metric name is the family's name
//! without its unit (`system_cpu_user`), and the unit is in the metric's `unit` field in
//! UCUM (`s`, `By`, `1`, `Hz`), so a collector's Prometheus exporter produces the same
//! names as `/metrics`. Labels are string attributes. The resource carries `service.name =
//! purveyor`, `host.name` and `service.instance.id` (the daemon's pid).
//!
//! A failed push is logged (naming the endpoint and the reason) and the next interval
//! tries again; nothing is queued, since the next push carries cumulative values anyway.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use purveyor_host::Host;

use crate::auth::Identity;
use crate::config::OtlpConfig;
use crate::metrics::{Kind, Selection, Snapshot};

/// The OTLP request for one snapshot taken at `now`, counters counted from `start`.
pub fn request(
    snapshot: &Snapshot,
    start: SystemTime,
    now: SystemTime,
) -> ExportMetricsServiceRequest {
    let nanos = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    };
    let (start, now) = (nanos(start), nanos(now));
    let metrics = snapshot
        .families
        .iter()
        .map(|family| {
            let points = family
                .samples
                .iter()
                .map(|sample| NumberDataPoint {
                    attributes: sample
                        .labels
                        .iter()
                        .map(|(key, value)| string(key, value))
                        .collect(),
                    start_time_unix_nano: if family.kind == Kind::Counter {
                        start
                    } else {
                        0
                    },
                    time_unix_nano: now,
                    value: Some(number_data_point::Value::AsDouble(sample.value)),
                    ..Default::default()
                })
                .collect();
            let data = match family.kind {
                Kind::Counter => metric::Data::Sum(Sum {
                    data_points: points,
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                }),
                Kind::Gauge => metric::Data::Gauge(Gauge {
                    data_points: points,
                }),
            };
            Metric {
                name: family.stem.clone(),
                description: family.help.clone(),
                unit: ucum(family.unit).to_string(),
                data: Some(data),
                ..Default::default()
            }
        })
        .collect();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    string("service.name", "purveyor"),
                    string("host.name", &hostname),
                    string("service.instance.id", &std::process::id().to_string()),
                ],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "purveyor".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
    }
}

/// A base unit in UCUM, as OTLP wants it.
fn ucum(unit: Option<&str>) -> &'static str {
    match unit {
        Some("seconds") => "s",
        Some("bytes") => "By",
        Some("ratio") => "1",
        Some("hertz") => "Hz",
        _ => "",
    }
}

/// Pushes a snapshot every interval until `shutdown` completes. Runs on the caller's
/// runtime; the gateway spawns it when its configuration has `[otlp]`.
pub async fn run(
    host: Host,
    selection: Selection,
    config: OtlpConfig,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let start = SystemTime::now();
    let caller = Identity::anonymous().caller;
    let mut ticks = tokio::time::interval(config.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = ticks.tick() => {}
        }
        let snapshot = crate::metrics::gather(&host, &selection, &caller).await;
        let body = request(&snapshot, start, SystemTime::now()).encode_to_vec();
        let pushed = tokio::time::timeout(
            config.interval.min(Duration::from_secs(10)),
            post(&config.endpoint, body),
        )
        .await;
        match pushed {
            Ok(Ok(())) => {
                tracing::debug!(endpoint = %config.endpoint, samples = snapshot.samples(), "OTLP push")
            }
            Ok(Err(error)) => {
                tracing::warn!(endpoint = %config.endpoint, %error, "OTLP push failed")
            }
            Err(_) => tracing::warn!(endpoint = %config.endpoint, "OTLP push timed out"),
        }
    }
}

/// POSTs one protobuf body to an `http://HOST:PORT/PATH` endpoint.
pub async fn post(endpoint: &str, body: Vec<u8>) -> Result<(), String> {
    let uri: hyper::Uri = endpoint
        .parse()
        .map_err(|e| format!("{endpoint:?} is not a URL: {e}"))?;
    let host = uri
        .host()
        .ok_or_else(|| format!("{endpoint:?} has no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| format!("HTTP handshake with {host}:{port} failed: {e}"))?;
    let driver = tokio::spawn(connection);
    let request = hyper::Request::post(uri.path_and_query().map_or("/v1/metrics", |p| p.as_str()))
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .header(hyper::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("sending to {endpoint} failed: {e}"))?;
    let status = response.status();
    let answer = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    driver.abort();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!(
            "{endpoint} answered {status}: {}",
            String::from_utf8_lossy(&answer[..answer.len().min(200)])
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Family, Sample};

    #[test]
    fn counters_are_cumulative_monotonic_sums_and_gauges_gauges() {
        let snapshot = Snapshot {
            families: vec![
                Family {
                    stem: "app_web_requests".into(),
                    unit: None,
                    kind: Kind::Counter,
                    help: "requests".into(),
                    samples: vec![Sample {
                        labels: vec![("exported_instance".into(), "a".into())],
                        value: 3.0,
                    }],
                },
                Family {
                    stem: "system_memory_free".into(),
                    unit: Some("bytes"),
                    kind: Kind::Gauge,
                    help: "free".into(),
                    samples: vec![Sample {
                        labels: vec![],
                        value: 5.0,
                    }],
                },
            ],
            problems: vec![],
        };
        let start = UNIX_EPOCH + Duration::from_secs(100);
        let now = UNIX_EPOCH + Duration::from_secs(160);
        let bytes = request(&snapshot, start, now).encode_to_vec();
        let decoded = ExportMetricsServiceRequest::decode(bytes.as_slice()).unwrap();
        let metrics = &decoded.resource_metrics[0].scope_metrics[0].metrics;
        let Some(metric::Data::Sum(sum)) = &metrics[0].data else {
            panic!("{:?}", metrics[0]);
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        assert_eq!(sum.data_points[0].start_time_unix_nano, 100_000_000_000);
        assert_eq!(sum.data_points[0].time_unix_nano, 160_000_000_000);
        assert_eq!(sum.data_points[0].attributes[0].key, "exported_instance");
        assert_eq!(
            (metrics[1].name.as_str(), metrics[1].unit.as_str()),
            ("system_memory_free", "By")
        );
        assert!(matches!(metrics[1].data, Some(metric::Data::Gauge(_))));
    }
}
