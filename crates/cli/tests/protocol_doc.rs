//! What `docs/protocol.md` promises about the JSON exchange, checked on the wire with a
//! plain socket: omitted and unknown fields, the error code of an unknown method, and the
//! order of a write's reply and the events it raises on the writer's own connection.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::{Daemon, workspace_library};
use serde_json::{Value as Json, json};

struct Wire(UnixStream);

impl Wire {
    fn open(d: &Daemon) -> Wire {
        let s = UnixStream::connect(&d.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut w = Wire(s);
        w.send(&json!({"protocol": 1, "minor": 11, "encoding": "json", "client": "doc-test"}));
        assert_eq!(w.recv()["protocol"], 1);
        w
    }

    fn send(&mut self, message: &Json) {
        let bytes = serde_json::to_vec(message).unwrap();
        self.0
            .write_all(&(bytes.len() as u32).to_le_bytes())
            .unwrap();
        self.0.write_all(&bytes).unwrap();
    }

    fn recv(&mut self) -> Json {
        let mut n = [0u8; 4];
        self.0.read_exact(&mut n).unwrap();
        let mut body = vec![0u8; u32::from_le_bytes(n) as usize];
        self.0.read_exact(&mut body).unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    fn request(&mut self, id: u32, request: Json) {
        self.send(&json!({"request": {"id": id, "request": request}}));
    }
}

fn config_daemon() -> Daemon {
    let lib = workspace_library("libpurveyor_config.so", "purveyor-example-config");
    let manifest = format!(
        "name = \"config\"\nhosting = \"isolated\"\nlibrary = {:?}\nclasses = [\"config.setting\"]\ncapabilities = [\"enumerate\", \"get\", \"put\", \"delete\", \"call\", \"subscribe\"]\n",
        lib.display().to_string()
    );
    Daemon::start(&[("config", manifest)], &[], &[])
}

/// A field with a default may be left out, an unknown field is ignored, and a write's
/// events reach the writer's own subscription before the write's reply.
#[test]
fn omitted_and_unknown_fields_and_the_order_of_a_writes_events() {
    let d = config_daemon();
    let mut w = Wire::open(&d);
    // `event` and `filter` left out; `colour` unknown.
    w.request(
        1,
        json!({"subscribe": {"class": "config.setting", "colour": "red"}}),
    );
    let handle = w.recv()["reply"]["outcome"]["ok"]["subscribed"]["handle"].clone();
    assert!(handle.is_u64(), "{handle}");
    for (id, request) in [
        (
            2,
            json!({"put": {"class": "config.setting", "instance": {"name": {"string": "doc"}, "value": {"string": "1"}}}}),
        ),
        (
            3,
            json!({"delete": {"class": "config.setting", "key": {"name": {"string": "doc"}}}}),
        ),
    ] {
        w.request(id, request);
        let first = w.recv();
        assert_eq!(
            first["push"]["handle"], handle,
            "the event comes first: {first}"
        );
        assert!(first["push"]["push"]["event"].is_object(), "{first}");
        let second = w.recv();
        assert_eq!(second["reply"]["id"], id, "then the reply: {second}");
        assert_eq!(second["reply"]["outcome"]["ok"], "done");
    }
}

/// A method the class does not have is `not_found`, naming the methods it has.
#[test]
fn an_unknown_method_is_not_found() {
    let d = config_daemon();
    let mut w = Wire::open(&d);
    w.request(
        1,
        json!({"call": {"class": "config.setting", "method": "nope", "key": {}, "args": {}}}),
    );
    let err = w.recv()["reply"]["outcome"]["err"].clone();
    assert_eq!(err["code"], "not_found", "{err}");
    assert_eq!(
        err["message"],
        "class config.setting has no method \"nope\" (it has rename, transfer)"
    );
}
