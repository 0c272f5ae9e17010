//! The two exposition formats of `/metrics`, chosen by the scraper's `Accept` header:
//! OpenMetrics text (what Prometheus asks for first), written by `prometheus-client`, and
//! the Prometheus text format 0.0.4 (what `promtool check metrics`, older scrapers and
//! `curl` get), written by the `prometheus` crate's `TextEncoder`.

use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use crate::metrics::{Kind, Snapshot};

/// The Prometheus text format's content type.
pub const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The OpenMetrics text format's content type.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics (with a non-zero quality).
pub fn wants_openmetrics(accept: &str) -> bool {
    accept.split(',').any(|item| {
        let mut parts = item.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        let refused = parts.any(|p| {
            p.strip_prefix("q=")
                .and_then(|q| q.parse::<f64>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
    })
}

/// The Prometheus text format (0.0.4).
pub fn text(snapshot: &Snapshot) -> String {
    let families: Vec<MetricFamily> = snapshot
        .families
        .iter()
        .map(|family| {
            let mut mf = MetricFamily::default();
            let (name, kind) = match family.kind {
                Kind::Counter => (format!("{}_total", family.name()), MetricType::COUNTER),
                Kind::Gauge => (family.name(), MetricType::GAUGE),
            };
            mf.set_name(name);
            mf.set_help(family.help.clone());
            mf.set_field_type(kind);
            mf.set_metric(
                family
                    .samples
                    .iter()
                    .map(|sample| {
                        let mut metric = proto::Metric::default();
                        metric.set_label(
                            sample
                                .labels
                                .iter()
                                .map(|(name, value)| {
                                    let mut pair = proto::LabelPair::default();
                                    pair.set_name(name.clone());
                                    pair.set_value(value.clone());
                                    pair
                                })
                                .collect(),
                        );
                        match family.kind {
                            Kind::Counter => {
                                let mut counter = proto::Counter::default();
                                counter.set_value(sample.value);
                                metric.set_counter(counter);
                            }
                            Kind::Gauge => {
                                let mut gauge = proto::Gauge::default();
                                gauge.set_value(sample.value);
                                metric.set_gauge(gauge);
                            }
                        }
                        metric
                    })
                    .collect(),
            );
            mf
        })
        .collect();
    let mut out = String::with_capacity(snapshot.samples() * 64 + 1024);
    prometheus::TextEncoder::new()
        .encode_utf8(&families, &mut out)
        .expect("writing to a String cannot fail and every family has samples");
    for problem in &snapshot.problems {
        out.push_str("# purveyor: ");
        out.push_str(&one_line(problem));
        out.push('\n');
    }
    out
}

/// OpenMetrics text, ending with `# EOF`.
pub fn openmetrics(snapshot: Snapshot) -> String {
    let capacity = snapshot.samples() * 64 + 1024;
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Families(snapshot)));
    let mut out = String::with_capacity(capacity);
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

/// A snapshot as a `prometheus-client` collector.
#[derive(Debug)]
struct Families(Snapshot);

impl prometheus_client::collector::Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in &self.0.families {
            let unit = family.unit.map(|u| match u {
                "bytes" => Unit::Bytes,
                "seconds" => Unit::Seconds,
                other => Unit::Other(other.to_string()),
            });
            // prometheus-client writes help text and label values as given; OpenMetrics
            // wants `\`, `"` and newlines escaped in both.
            let help = escape(&family.help);
            let kind = match family.kind {
                Kind::Counter => prometheus_client::metrics::MetricType::Counter,
                Kind::Gauge => prometheus_client::metrics::MetricType::Gauge,
            };
            let mut metric = encoder.encode_descriptor(&family.stem, &help, unit.as_ref(), kind)?;
            if let [only] = family.samples.as_slice()
                && only.labels.is_empty()
            {
                // A singleton: written without `{}`.
                sample(family.kind, only.value, metric)?;
                continue;
            }
            for s in &family.samples {
                let labels: Vec<(&str, String)> = s
                    .labels
                    .iter()
                    .map(|(name, value)| (name.as_str(), escape(value)))
                    .collect();
                sample(family.kind, s.value, metric.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

fn sample(
    kind: Kind,
    value: f64,
    encoder: prometheus_client::encoding::MetricEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    match kind {
        Kind::Counter => ConstCounter::new(value).encode(encoder),
        Kind::Gauge => ConstGauge::new(value).encode(encoder),
    }
}

fn escape(text: &str) -> String {
    if !text.contains(['\\', '"', '\n']) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Family, Sample};

    fn snapshot() -> Snapshot {
        Snapshot {
            families: vec![
                Family {
                    stem: "app_web_requests".into(),
                    unit: None,
                    kind: Kind::Counter,
                    help: "requests served".into(),
                    samples: vec![Sample {
                        labels: vec![("exported_instance".into(), "a\"b".into())],
                        value: 3.0,
                    }],
                },
                Family {
                    stem: "app_web_latency".into(),
                    unit: Some("seconds"),
                    kind: Kind::Gauge,
                    help: "latency\nper request".into(),
                    samples: vec![Sample {
                        labels: vec![],
                        value: 0.25,
                    }],
                },
            ],
            problems: vec!["app.gone: provider\nfailed".into()],
        }
    }

    #[test]
    fn text_format_names_counters_with_total_and_escapes() {
        let text = text(&snapshot());
        assert_eq!(
            text,
            "# HELP app_web_requests_total requests served\n\
             # TYPE app_web_requests_total counter\n\
             app_web_requests_total{exported_instance=\"a\\\"b\"} 3\n\
             # HELP app_web_latency_seconds latency\\nper request\n\
             # TYPE app_web_latency_seconds gauge\n\
             app_web_latency_seconds 0.25\n\
             # purveyor: app.gone: provider failed\n"
        );
    }

    #[test]
    fn openmetrics_has_units_total_samples_and_eof() {
        let text = openmetrics(snapshot());
        assert_eq!(
            text,
            "# HELP app_web_requests requests served\n\
             # TYPE app_web_requests counter\n\
             app_web_requests_total{exported_instance=\"a\\\"b\"} 3.0\n\
             # HELP app_web_latency_seconds latency\\nper request\n\
             # TYPE app_web_latency_seconds gauge\n\
             # UNIT app_web_latency_seconds seconds\n\
             app_web_latency_seconds 0.25\n\
             # EOF\n"
        );
    }

    #[test]
    fn accept_header_negotiation() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(prometheus));
        assert!(!wants_openmetrics("text/plain"));
        assert!(!wants_openmetrics("*/*"));
        assert!(!wants_openmetrics("application/openmetrics-text;q=0"));
    }
}
