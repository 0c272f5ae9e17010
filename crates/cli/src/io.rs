//! `purveyor io ls`, `purveyor cat`, `purveyor cp`: streams through I/O procedures.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use purveyor_client::io::READ_CHUNK;
use purveyor_client::{Client, IoMode};

/// `purveyor io ls`: the procedures the host serves, in lookup order.
pub fn ls(client: &mut Client, json: bool) -> Result<ExitCode> {
    let list = client.io_list()?;
    if json {
        let rows: Vec<_> = list
            .iter()
            .map(|p| {
                serde_json::json!({
                    "code": p.code, "scope": p.scope, "origin": p.origin,
                    "description": p.description, "open_streams": p.open_streams,
                    "shadowed": p.shadowed,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    table.set_header(["CODE", "SCOPE", "PROVIDER", "OPEN", "DESCRIPTION"]);
    for p in &list {
        let code = format!(
            "\"{}\"{}",
            p.code,
            if p.shadowed { " (hidden)" } else { "" }
        );
        table.add_row([
            code,
            p.scope.clone(),
            p.origin.clone(),
            p.open_streams.to_string(),
            p.description.clone(),
        ]);
    }
    println!("{table}");
    Ok(ExitCode::SUCCESS)
}

/// `purveyor cat NAME…`: each stream's bytes to stdout, in order.
pub fn cat(client: &mut Client, names: &[String]) -> Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut buf = Vec::new();
    for name in names {
        let mut stream = client
            .io_open(name, IoMode::Read)
            .with_context(|| format!("cannot open {name}"))?;
        loop {
            let n = client
                .io_read(&mut stream, &mut buf, READ_CHUNK)
                .with_context(|| format!("cannot read {name}"))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf)?;
        }
        client.io_close(stream)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// `purveyor cp SRC DST`: either side may be a procedure name. A progress line on a
/// terminal for copies that take a while.
pub fn cp(client: &mut Client, src: &str, dst: &str, quiet: bool) -> Result<ExitCode> {
    let mut from = client
        .io_open(src, IoMode::Read)
        .with_context(|| format!("cannot open {src}"))?;
    let to = client
        .io_open(dst, IoMode::Write)
        .with_context(|| format!("cannot create {dst}"))?;
    let total = from.size;
    let mut progress = Progress::new(total, !quiet && std::io::stderr().is_terminal());
    let mut buf = Vec::new();
    let mut copied = 0u64;
    loop {
        let n = client
            .io_read(&mut from, &mut buf, READ_CHUNK)
            .with_context(|| format!("cannot read {src}"))?;
        if n == 0 {
            break;
        }
        client
            .io_write(&to, &buf, false)
            .with_context(|| format!("cannot write {dst}"))?;
        copied += n as u64;
        progress.update(copied);
    }
    client.io_close(from)?;
    client
        .io_close(to)
        .with_context(|| format!("cannot finish {dst}"))?;
    progress.finish(copied);
    Ok(ExitCode::SUCCESS)
}

/// A one-line progress report on stderr, redrawn at most ten times a second, shown only
/// after the first half second.
struct Progress {
    total: Option<u64>,
    enabled: bool,
    started: Instant,
    drawn: Option<Instant>,
}

impl Progress {
    fn new(total: Option<u64>, enabled: bool) -> Self {
        Progress {
            total,
            enabled,
            started: Instant::now(),
            drawn: None,
        }
    }

    fn update(&mut self, done: u64) {
        if !self.enabled || self.started.elapsed() < Duration::from_millis(500) {
            return;
        }
        if self
            .drawn
            .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        self.drawn = Some(Instant::now());
        let rate = done as f64 / self.started.elapsed().as_secs_f64() / 1e6;
        let line = match self.total {
            Some(total) if total > 0 => {
                let pct = done as f64 * 100.0 / total as f64;
                let width = 30;
                let filled = ((pct / 100.0) * width as f64) as usize;
                format!(
                    "[{}{}] {pct:5.1}%  {} / {}  {rate:.0} MB/s",
                    "#".repeat(filled.min(width)),
                    " ".repeat(width - filled.min(width)),
                    mb(done),
                    mb(total)
                )
            }
            _ => format!("{}  {rate:.0} MB/s", mb(done)),
        };
        eprint!("\r{line}\x1b[K");
    }

    fn finish(&mut self, done: u64) {
        if self.drawn.is_some() {
            self.drawn = None;
            self.started -= Duration::from_secs(1);
            self.update(done);
            eprintln!();
        }
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}
