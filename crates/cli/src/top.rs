//! `purveyor top`: the providers by what they cost, refreshed like `top` (ratatui), or
//! one sample for scripts (`--once`, with `--json`). Everything comes from the host's own
//! classes, `purveyor.host` and `purveyor.provider` (`docs/lifecycle.md`, "Accounting").

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Result;
use purveyor_client::Client;
use purveyor_model::{ClassPath, Instance, InstanceKey, Value};

/// What the rows are sorted by (largest first; name for ties).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    Cpu,
    Memory,
    Calls,
    Errors,
    Latency,
}

/// One provider between two samples.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub name: String,
    pub hosting: String,
    pub state: String,
    pub pid: Option<u64>,
    /// CPU use over the interval, in percent of one CPU.
    pub cpu_percent: f64,
    pub cpu_seconds: f64,
    pub rss_bytes: Option<u64>,
    pub calls: u64,
    pub calls_per_second: f64,
    pub errors: u64,
    pub timeouts: u64,
    pub crashes: u64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
}

/// The host between two samples.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Totals {
    pub pid: u64,
    pub cpu_percent: f64,
    pub rss_bytes: Option<u64>,
    pub connections_open: u64,
    pub requests_per_second: f64,
    pub providers: u64,
    pub providers_loaded: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct View {
    pub interval_seconds: f64,
    pub host: Totals,
    pub providers: Vec<Row>,
}

struct Sample {
    at: Instant,
    host: Instance,
    providers: Vec<Instance>,
}

fn sample(client: &mut Client) -> Result<Sample> {
    let host = client.get(&ClassPath::new("purveyor.host")?, &InstanceKey::new())?;
    let providers = client.enumerate(&ClassPath::new("purveyor.provider")?, &InstanceKey::new())?;
    Ok(Sample {
        at: Instant::now(),
        host,
        providers,
    })
}

fn number(i: &Instance, name: &str) -> Option<f64> {
    match i.get(name)? {
        Value::U64(v) => Some(*v as f64),
        Value::I64(v) => Some(*v as f64),
        Value::F64(v) => Some(*v),
        _ => None,
    }
}

fn count(i: &Instance, name: &str) -> u64 {
    number(i, name).unwrap_or(0.0) as u64
}

fn text(i: &Instance, name: &str) -> String {
    match i.get(name) {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    }
}

/// The rates between `before` and `now`, sorted by `key`.
fn view(before: &Sample, now: &Sample, key: SortKey) -> View {
    let dt = now.at.duration_since(before.at).as_secs_f64().max(1e-3);
    let rate = |a: Option<f64>, b: Option<f64>| (b.unwrap_or(0.0) - a.unwrap_or(0.0)).max(0.0) / dt;
    let mut providers: Vec<Row> = now
        .providers
        .iter()
        .map(|p| {
            let name = text(p, "name");
            let was = before.providers.iter().find(|b| text(b, "name") == name);
            let cpu = number(p, "cpu_seconds");
            Row {
                hosting: text(p, "hosting"),
                state: text(p, "state"),
                pid: number(p, "pid").map(|v| v as u64),
                cpu_percent: 100.0 * rate(was.and_then(|w| number(w, "cpu_seconds")), cpu),
                cpu_seconds: cpu.unwrap_or(0.0),
                rss_bytes: number(p, "rss_bytes").map(|v| v as u64),
                calls: count(p, "calls"),
                calls_per_second: rate(was.and_then(|w| number(w, "calls")), number(p, "calls")),
                errors: count(p, "errors"),
                timeouts: count(p, "timeouts"),
                crashes: count(p, "crashes"),
                latency_p50_ms: number(p, "latency_p50_ms"),
                latency_p99_ms: number(p, "latency_p99_ms"),
                name,
            }
        })
        .collect();
    let by = |r: &Row| -> f64 {
        match key {
            SortKey::Cpu => r.cpu_percent + r.cpu_seconds * 1e-9,
            SortKey::Memory => r.rss_bytes.unwrap_or(0) as f64,
            SortKey::Calls => r.calls_per_second + r.calls as f64 * 1e-12,
            SortKey::Errors => r.errors as f64,
            SortKey::Latency => r.latency_p99_ms.unwrap_or(0.0),
        }
    };
    providers.sort_by(|a, b| by(b).total_cmp(&by(a)).then_with(|| a.name.cmp(&b.name)));
    let h = &now.host;
    View {
        interval_seconds: dt,
        host: Totals {
            pid: count(h, "pid"),
            cpu_percent: 100.0
                * rate(
                    number(&before.host, "cpu_seconds"),
                    number(h, "cpu_seconds"),
                ),
            rss_bytes: number(h, "rss_bytes").map(|v| v as u64),
            connections_open: count(h, "connections_open"),
            requests_per_second: rate(number(&before.host, "requests"), number(h, "requests")),
            providers: count(h, "providers"),
            providers_loaded: count(h, "providers_loaded"),
        },
        providers,
    }
}

/// `purveyor top --once`: two samples `interval` apart, printed as a table or JSON.
pub fn once(client: &mut Client, interval: Duration, key: SortKey, json: bool) -> Result<()> {
    let before = sample(client)?;
    std::thread::sleep(interval);
    let now = sample(client)?;
    let view = view(&before, &now, key);
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &view).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        for line in header(&view) {
            writeln!(out, "{line}")?;
        }
        writeln!(out)?;
        let rows = table(&view);
        for row in rows {
            writeln!(out, "{}", row.join("  "))?;
        }
    }
    Ok(())
}

fn bytes(b: Option<u64>) -> String {
    match b {
        None => "-".into(),
        Some(b) if b >= 1 << 30 => format!("{:.1}G", b as f64 / (1u64 << 30) as f64),
        Some(b) if b >= 1 << 20 => format!("{:.1}M", b as f64 / (1u64 << 20) as f64),
        Some(b) => format!("{:.0}K", b as f64 / 1024.0),
    }
}

fn header(v: &View) -> Vec<String> {
    let h = &v.host;
    vec![
        format!(
            "purveyor top — daemon pid {}: CPU {:.1}%, memory {}, {} connections, {:.0} requests/s",
            h.pid,
            h.cpu_percent,
            bytes(h.rss_bytes),
            h.connections_open,
            h.requests_per_second
        ),
        format!(
            "providers: {} registered, {} loaded; every {:.1}s",
            h.providers, h.providers_loaded, v.interval_seconds
        ),
    ]
}

const COLUMNS: [&str; 12] = [
    "PROVIDER", "HOSTING", "STATE", "PID", "CPU%", "CPU s", "MEM", "CALLS/s", "ERRORS", "TIMEOUTS",
    "p50 ms", "p99 ms",
];

/// The header row and one row per provider, padded to common widths.
fn table(v: &View) -> Vec<Vec<String>> {
    let ms = |m: Option<f64>| m.map(|m| format!("{m:.2}")).unwrap_or_else(|| "-".into());
    let mut rows: Vec<Vec<String>> = vec![COLUMNS.iter().map(|c| c.to_string()).collect()];
    for r in &v.providers {
        rows.push(vec![
            r.name.clone(),
            r.hosting.clone(),
            r.state.clone(),
            r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            format!("{:.1}", r.cpu_percent),
            format!("{:.2}", r.cpu_seconds),
            bytes(r.rss_bytes),
            format!("{:.1}", r.calls_per_second),
            r.errors.to_string(),
            r.timeouts.to_string(),
            ms(r.latency_p50_ms),
            ms(r.latency_p99_ms),
        ]);
    }
    let widths: Vec<usize> = (0..COLUMNS.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in &mut rows {
        for (c, cell) in row.iter_mut().enumerate() {
            let pad = widths[c] - cell.chars().count();
            *cell = if c < 3 {
                format!("{cell}{}", " ".repeat(pad))
            } else {
                format!("{}{cell}", " ".repeat(pad))
            };
        }
    }
    rows
}

/// `purveyor top`: the live view until `q`.
pub fn live(client: &mut Client, interval: Duration, mut key: SortKey) -> Result<()> {
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
    use ratatui::widgets::Paragraph;

    let mut terminal = ratatui::init();
    let result = (|| -> Result<()> {
        let mut before = sample(client)?;
        let mut latest: Option<Sample> = None;
        let mut shown: Option<View> = None;
        let mut next = Instant::now() + interval.min(Duration::from_millis(500));
        loop {
            if Instant::now() >= next {
                let now = sample(client)?;
                if let Some(last) = latest.take() {
                    before = last;
                }
                shown = Some(view(&before, &now, key));
                latest = Some(now);
                next = Instant::now() + interval;
            }
            terminal.draw(|frame| {
                let mut lines: Vec<String> = Vec::new();
                match &shown {
                    Some(v) => {
                        lines.extend(header(v));
                        lines.push(format!(
                            "sort: [c]pu [m]emory [n] calls [e]rrors [l]atency — now {key:?}; [q]uit"
                        ));
                        lines.push(String::new());
                        lines.extend(table(v).into_iter().map(|r| r.join("  ")));
                    }
                    None => lines.push("purveyor top: sampling…".into()),
                }
                frame.render_widget(Paragraph::new(lines.join("\n")), frame.area());
            })?;
            let wait = next.saturating_duration_since(Instant::now());
            if event::poll(wait)?
                && let Event::Key(k) = event::read()?
                && k.kind == KeyEventKind::Press
            {
                let resort = |key| -> Option<SortKey> { Some(key) };
                let chosen = match k.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                    KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                        return Ok(());
                    }
                    KeyCode::Char('c') => resort(SortKey::Cpu),
                    KeyCode::Char('m') => resort(SortKey::Memory),
                    KeyCode::Char('n') => resort(SortKey::Calls),
                    KeyCode::Char('e') => resort(SortKey::Errors),
                    KeyCode::Char('l') => resort(SortKey::Latency),
                    _ => None,
                };
                if let Some(chosen) = chosen {
                    key = chosen;
                    // The same two samples, sorted anew.
                    if let Some(last) = &latest {
                        shown = Some(view(&before, last, key));
                    }
                }
            }
        }
    })();
    ratatui::restore();
    result
}
