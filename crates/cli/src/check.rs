//! `purveyor check`: validates manifests and says exactly what is wrong where.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use purveyor_host::{HostConfig, Manifest, ManifestError, manifest};
use purveyor_protocol::HostMode;
use serde_json::json;

use crate::Global;

pub fn run(global: &Global, path: Option<&Path>) -> Result<ExitCode> {
    let mut good: Vec<Manifest> = Vec::new();
    let mut bad: Vec<ManifestError> = Vec::new();
    let mut checked = Vec::new();
    match path {
        Some(p) if p.is_file() => {
            checked.push(p.display().to_string());
            match Manifest::load(p) {
                Ok(m) => good.push(m),
                Err(e) => bad.extend(e),
            }
        }
        dir => {
            // What the host would read (the same defaults and overrides, or this
            // directory), and what the host would refuse across manifests (a class that
            // two providers claim), as a daemon would.
            let dirs = match dir {
                Some(dir) => Some(vec![dir.to_path_buf()]),
                None => (!global.provider_dirs.is_empty()).then(|| global.provider_dirs.clone()),
            };
            let host = purveyor_builtins::default_host(HostMode::Embedded, dirs);
            let config: &HostConfig = host.config();
            for dir in config.provider_dirs.iter().filter(|d| d.exists()) {
                checked.push(dir.display().to_string());
                let (g, b) = manifest::load_dir(dir);
                good.extend(g);
                bad.extend(b);
            }
            bad.extend(
                host.problems()
                    .iter()
                    .filter(|p| !bad.contains(p))
                    .cloned()
                    .collect::<Vec<_>>(),
            );
        }
    }
    if global.json {
        let value = json!({
            "checked": checked,
            "valid": good.iter().map(|m| json!({
                "name": m.name.as_str(),
                "file": m.source.to_string(),
                "hosting": m.hosting.as_str(),
                "classes": m.classes.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "errors": bad.iter().map(|e| json!({
                "file": e.file,
                "line": e.line.map(|l| l.0),
                "column": e.line.map(|l| l.1),
                "field": e.field,
                "message": e.message,
            })).collect::<Vec<_>>(),
        });
        crate::print_json(&value)?;
    } else {
        let mut text = String::new();
        for m in &good {
            text.push_str(&format!(
                "ok     {} ({}, {})\n",
                m.source, m.name, m.hosting
            ));
        }
        for e in &bad {
            text.push_str(&format!("error  {e}\n"));
        }
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        for warning in good.iter().filter_map(|m| m.runs_as_root_unasked(uid)) {
            text.push_str(&format!("warn   {warning}\n"));
        }
        if good.iter().any(|m| !m.limits.is_empty()) {
            text.push_str(&format!(
                "note   {}\n",
                purveyor_hosting::confine::limits_report()
            ));
        }
        if good.iter().any(|m| m.sandbox.is_some()) {
            text.push_str(&match purveyor_hosting::sandbox::landlock_abi() {
                0 => "warn   this kernel has no Landlock: a strict sandbox is its seccomp filter only\n".to_string(),
                abi => format!("note   strict sandboxes: Landlock ABI {abi} and seccomp on this kernel\n"),
            });
        }
        if checked.is_empty() {
            text.push_str("no providers directory found; only the built-in manifests apply\n");
        }
        text.push_str(&format!(
            "{} valid, {} error{}\n",
            good.len(),
            bad.len(),
            if bad.len() == 1 { "" } else { "s" }
        ));
        crate::out(&text)?;
    }
    Ok(if bad.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
