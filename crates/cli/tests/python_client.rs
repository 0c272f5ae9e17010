//! The official Python client (`clients/python`) passes its own tests (pytest) against
//! a daemon of this build, started and stopped by those tests (`tests/conftest.py`).
//! Needs pytest: `.ci/run` makes `target/pyvenv` with it; `PURVEYOR_PYTHON` names
//! another interpreter that has it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{BIN, workspace_library};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The interpreter with pytest: `PURVEYOR_PYTHON`, else `.ci/run`'s venv, else `python3`.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("PURVEYOR_PYTHON") {
        return p.into();
    }
    let venv = root().join("target/pyvenv/bin/python");
    if venv.is_file() {
        return venv;
    }
    "python3".into()
}

#[test]
#[ignore = "needs pytest: `.ci/run` makes target/pyvenv with it"]
fn the_python_client_passes_its_tests_against_this_daemon() {
    let config = workspace_library("libpurveyor_config.so", "purveyor-example-config");
    workspace_library("libpurveyor_dialogs.so", "purveyor-example-dialogs");
    let python = python();
    let tls = tempfile::tempdir().unwrap();
    certificates(tls.path());
    let out = Command::new(&python)
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "clients/python/tests",
        ])
        .current_dir(root())
        .env("PYTHONPATH", root().join("clients/python"))
        .env("PURVEYOR_BIN", BIN)
        .env("PURVEYOR_LIBS", config.parent().unwrap())
        .env("PURVEYOR_TEST_TLS", tls.path())
        .output()
        .unwrap_or_else(|e| panic!("{} could not run: {e}", python.display()));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pytest failed ({}):\n{said}\n{}",
        python.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains(" passed"), "{said}");
    assert!(!said.contains("skipped") || !common::is_root(), "{said}");
}

/// For the remote tests (`clients/python/tests/test_remote.py`): a CA, the daemon's
/// certificate for 127.0.0.1, client certificates `operator` (mapped to root) and
/// `stranger` (another CA's), and `remote.toml`.
fn certificates(dir: &Path) {
    let ours = common::Pki::new("test CA");
    ours.write_ca(&dir.join("ca.crt"));
    ours.issue(dir, "server", "daemon", &["127.0.0.1"]);
    ours.issue(dir, "operator", "operator", &[]);
    common::Pki::new("another CA").issue(dir, "stranger", "operator", &[]);
    std::fs::write(
        dir.join("remote.toml"),
        "[tls]\ncertificate = \"server.crt\"\nkey = \"server.key\"\nclient_ca = \"ca.crt\"\n[users]\noperator = \"root\"\n",
    )
    .unwrap();
}
