//! The terminal flow for real: `purveyor call` and `purveyor agent` run in tmux panes;
//! the test types with `send-keys` and reads what the user saw with `capture-pane`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
#[ignore = "needs tmux; .ci/run installs it and runs the ignored tests"]
fn the_terminal_asks_in_call_hides_the_secret_and_the_agent_talks_on_the_phone() {
    let d = dialog_daemon("");
    let socket = d.socket.display().to_string();

    // In-call: `purveyor call` asks for the confirmation and the passphrase.
    let call = Tmux::start(
        d.dir.path(),
        "call",
        &format!(
            "{BIN} call --socket {socket} demo.vault.destroy name=photos; echo EXIT=$?; sleep 60"
        ),
    );
    call.wait_for("Destroy vault photos?");
    let screen = call.destroy_photos();
    assert!(
        screen.contains("[####################] 100% shredded"),
        "{screen}"
    );
    // The passphrase was never echoed.
    let typed = screen
        .lines()
        .find(|l| l.contains("(hidden):"))
        .unwrap_or_default();
    assert!(
        !typed.contains("purveyor"),
        "the secret was echoed: {typed:?}"
    );

    // The embedded host (no daemon) shows the call's dialog the same way.
    let providers = d.dir.path().join("providers").display().to_string();
    let embedded = Tmux::start(
        d.dir.path(),
        "embedded",
        &format!(
            "{BIN} --embedded --providers {providers} call demo.vault.destroy name=taxes; echo EXIT=$?; sleep 60"
        ),
    );
    embedded.wait_for("Really destroy taxes? [y/N]:");
    embedded.keys(&["n", "Enter"]);
    embedded.wait_for("The vault's passphrase (hidden):");
    embedded.keys(&["x", "Enter"]);
    embedded.wait_for("[1] Destroy  [2] Cancel:");
    embedded.keys(&["2", "Enter"]);
    let screen = embedded.wait_for("EXIT=");
    assert!(
        screen.contains("taxes was not destroyed: cancelled"),
        "{screen}"
    );

    // Spontaneous: the agent shows the phone's dialog and its updates.
    let agent = Tmux::start(
        d.dir.path(),
        "agent",
        &format!("{BIN} agent --socket {socket}"),
    );
    agent.wait_for("showing dialogs for uid");
    let out = Command::new(BIN)
        .args([
            "call",
            "--socket",
            &socket,
            "phone.line.dial",
            "number=555-0100",
            "talk_ms=300",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    agent.wait_for("Pick up the handset, then choose Talk.");
    agent.wait_for("[1] Talk  [2] Hang up");
    agent.keys(&["1", "Enter"]);
    agent.wait_for("Connected to 555-0100. Talking...");
    agent.wait_for("555-0100 hung up. You may hang up now.");
    agent.keys(&["1", "Enter"]);
    let screen = agent.wait_for("closed: call ended");
    assert!(screen.contains("== Phone: calling 555-0100 =="), "{screen}");
    // `purveyor agent` took the phone's dialog on a direct channel.
    wait_until("a direct open in the log", Duration::from_secs(10), || {
        d.log().contains("provider=phone in_call=false direct=true")
    });
}
