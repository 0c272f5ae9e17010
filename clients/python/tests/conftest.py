"""A real daemon for the tests: ``purveyor serve`` on a socket in a temp directory, with
the example providers `config` (writes, methods, events) and `confirm` (in-call dialogs),
stopped by its pid when the tests end.

``PURVEYOR_BIN`` names the daemon (default: ``target/debug/purveyor`` of this checkout)
and ``PURVEYOR_LIBS`` the directory of the example libraries (default: that binary's
directory). ``cargo test -p purveyor --test python_client`` sets both, and
``PURVEYOR_TEST_TLS``: a directory with ``remote.toml``, a CA and client certificates
(made by the Rust test), with which the daemon also listens for remote clients over TLS
on a loopback port (``daemon.tls_port``).
"""

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _bin() -> Path:
    return Path(os.environ.get("PURVEYOR_BIN", ROOT / "target" / "debug" / "purveyor"))


class Daemon:
    def __init__(self, dir: Path) -> None:
        binary = _bin()
        libs = Path(os.environ.get("PURVEYOR_LIBS", binary.parent))
        for lib in ("libpurveyor_config.so", "libpurveyor_dialogs.so"):
            if not (libs / lib).exists():
                raise RuntimeError(f"{libs / lib} is missing: run `cargo build --workspace` first")
        providers = dir / "providers"
        providers.mkdir()
        (providers / "config.toml").write_text(
            'name = "config"\nhosting = "isolated"\n'
            f'library = "{libs / "libpurveyor_config.so"}"\n'
            'classes = ["config.setting"]\n'
            'capabilities = ["enumerate", "get", "put", "delete", "call", "subscribe"]\n'
        )
        (providers / "confirm.toml").write_text(
            'name = "confirm"\nhosting = "isolated"\n'
            f'library = "{libs / "libpurveyor_dialogs.so"}"\n'
            'classes = ["demo.vault", "demo.dialog_probe"]\n'
            'capabilities = ["enumerate", "get", "call"]\n'
        )
        # Every local user may read `config`; only the owner (and root) may write it.
        policy = dir / "access.toml"
        policy.write_text('[namespace.config]\nread = ["@local"]\n')
        self.socket = str(dir / "d.sock")
        self.log = dir / "daemon.log"
        self.tls = os.environ.get("PURVEYOR_TEST_TLS")
        self.tls_port = None
        extra = []
        if self.tls:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.tls_port = s.getsockname()[1]
            extra = ["--listen", f"tls://127.0.0.1:{self.tls_port}",
                     "--remote-config", str(Path(self.tls) / "remote.toml")]
        env = dict(os.environ, PURVEYOR_WORKER=str(binary), PURVEYOR_STATE_DIR=str(dir / "state"))
        env.pop("PURVEYOR_SOCKET", None)
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [str(binary), "serve", "-v", "--socket", self.socket, "--providers", str(providers),
                 "--access", str(policy), *extra],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + 20
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the daemon exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.socket(socket.AF_UNIX) as probe:
                    probe.connect(self.socket)
                if self.tls_port:
                    socket.create_connection(("127.0.0.1", self.tls_port), 1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("the daemon did not listen within 20 s")
                time.sleep(0.02)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture(scope="session")
def daemon():
    with tempfile.TemporaryDirectory() as dir:
        os.chmod(dir, 0o755)
        d = Daemon(Path(dir))
        try:
            os.chmod(d.socket, 0o666)
            yield d
        finally:
            d.stop()
