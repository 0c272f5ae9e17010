use super::*;

const GOOD: &str = r#"
name = "demo"
hosting = "builtin"
builtin = "demo"
classes = ["demo.thing"]
capabilities = ["enumerate", "get"]
clear_after = "30s"
pure = false
"#;

fn parse(text: &str) -> Result<Manifest, Vec<ManifestError>> {
    Manifest::parse(
        text,
        ManifestSource::File("providers/demo.toml".into()),
        Some("demo"),
    )
}

#[test]
fn good_manifest_parses() {
    let m = parse(GOOD).unwrap();
    assert_eq!(m.name.as_str(), "demo");
    assert_eq!(m.hosting, Hosting::Builtin);
    assert_eq!(m.entry, Entry::Builtin("demo".into()));
    assert_eq!(m.clear_after, Duration::from_secs(30));
    assert!(!m.pure);
    assert_eq!(m.call_timeout, DEFAULT_CALL_TIMEOUT);
}

/// A table of broken manifests and the exact errors they produce.
#[test]
fn broken_manifests_give_exact_errors() {
    let cases: &[(&str, &[&str])] = &[
        (
            "name = \"demo\"\nhosting = \"builtin\"\nbuiltin = \"demo\"\n",
            &[
                "providers/demo.toml:1:1: field `classes`: a provider must serve at least one class (or install I/O procedures with `io`)",
            ],
        ),
        (
            "name = \"demo\"\nhosting = \"isolated\"\nlibrary = \"x.so\"\nio = [\"xor\", \"TAR\", \"TAR \"]\nclasses = [\"demo.a\"]\n",
            &[
                "providers/demo.toml:4:7: field `io`: four-character code \"xor \" has a lowercase letter; codes are uppercase (\"XOR \")",
                "providers/demo.toml:4:21: field `io`: I/O procedure \"TAR \" is listed twice",
                "providers/demo.toml:5:11: field `classes`: an I/O procedure provider (with `io`) serves no classes in this version",
            ],
        ),
        (
            "name = \"demo\"\nhosting = \"builtin\"\nbuiltin = \"demo\"\nio = [\"XOR \"]\n",
            &[
                "providers/demo.toml:4:6: field `io`: builtin I/O procedures are the host's own (DOS, MEM, GZ, TAR); a provider of I/O procedures is a library or an executable",
            ],
        ),
        (
            "name = \"demo\"\nhosting = \"dll\"\nclasses = [\"demo.thing\"]\n",
            &[
                "providers/demo.toml:2:11: field `hosting`: unknown hosting model \"dll\" (expected \"builtin\", \"in-daemon\", \"isolated\" or \"external\")",
            ],
        ),
        (
            "name = \"Demo\"\nhosting = \"builtin\"\nbuiltin = \"demo\"\nclasses = [\"demo.thing\"]\n",
            &[
                "providers/demo.toml:1:8: field `name`: invalid provider name \"Demo\": it must start with a lowercase ASCII letter",
            ],
        ),
        (
            "name = \"other\"\nhosting = \"builtin\"\nbuiltin = \"demo\"\nclasses = [\"demo.thing\"]\n",
            &[
                "providers/demo.toml:1:8: field `name`: provider \"other\" must be in a file named other.toml (one manifest per provider, named after it)",
            ],
        ),
        (
            "name = \"demo\"\nhosting = \"builtin\"\nbuiltin = \"demo\"\nclasses = [\"demo\", \"demo.a\", \"demo.a\"]\n",
            &[
                "providers/demo.toml:4:12: field `classes`: invalid class path \"demo\": it needs a namespace and a class name, like \"system.cpu\"",
                "providers/demo.toml:4:30: field `classes`: class demo.a is listed twice",
            ],
        ),
        (
            "name = \"demo\"\nhosting = \"builtin\"\nbuiltin = \"demo\"\nclasses = [\"demo.a\"]\nclear_after = \"soon\"\n",
            &[
                "providers/demo.toml:5:15: field `clear_after`: \"soon\" is not a duration (expected number at 0); write it like \"30s\", \"5m\" or \"1h 30m\"",
            ],
        ),
        (
            "name = \"demo\"\nhosting = \"builtin\"\nbuiltin = \"demo\"\nclasses = [\"demo.a\"]\nclear_after = \"10ms\"\n",
            &[
                "providers/demo.toml:5:15: field `clear_after`: 10ms is shorter than the minimum of 100ms",
            ],
        ),
        (
            "name = \"demo\"\nhosting = \"isolated\"\nclasses = [\"demo.a\"]\n",
            &[
                "providers/demo.toml:2:11: field `library`: hosting = \"isolated\" needs a `library` field",
            ],
        ),
        (
            "name = \"demo\"\nhosting = \"builtin\"\nbuiltin = \"demo\"\ncommand = [\"x\"]\nclasses = [\"demo.a\"]\n",
            &[
                "providers/demo.toml:4:11: field `command`: `command` is only allowed with hosting = \"external\"",
            ],
        ),
        (
            "name = \"demo\"\nhosting = \"builtin\"\nbuiltin = \"demo\"\nclasses = [\"demo.a\"]\ncapabilities = [\"fly\"]\n",
            &[
                "providers/demo.toml:5:17: field `capabilities`: unknown capability \"fly\" (expected enumerate, get, put, delete, call or subscribe)",
            ],
        ),
        (
            "name = \"demo\"\nhosting = \"builtin\"\nbuiltin = \"demo\"\nclasses = [\"demo.a\"]\ncolour = \"red\"\n",
            &[
                "providers/demo.toml:5:1: field `colour`: unknown field `colour`, expected one of `name`, `description`, `hosting`, `builtin`, `library`, `host_group`, `command`, `classes`, `io`, `capabilities`, `kind`, `clear_after`, `pure`, `call_timeout`, `user`, `group`, `limits`, `sandbox`, `sandbox_read`",
            ],
        ),
        (
            "name = \"demo\"\nhosting = \"builtin\"\nbuiltin = \"demo\"\nclasses = [\"demo.a\"]\npure = \"yes\"\n",
            &[
                "providers/demo.toml:5:8: field `pure`: invalid type: string \"yes\", expected a boolean",
            ],
        ),
        (
            "name = \"demo\"\nhosting = \"builtin\"\nbuiltin = \"demo\"\nclasses = [\"demo.a\"]\nkind = \"metrics\"\n",
            &[
                "providers/demo.toml:5:8: field `kind`: unknown provider kind \"metrics\" (expected instance, counter, event or io)",
            ],
        ),
        (
            "name = \"demo\"\nhosting = builtin\n",
            &["providers/demo.toml:2:11: field `hosting`: invalid string; expected `\"`, `'`"],
        ),
    ];
    for (text, expected) in cases {
        let errors = parse(text).expect_err(text);
        let got: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(got, *expected, "manifest:\n{text}");
    }
}

/// A manifest without `clear_after` takes the configured default for its kind; one
/// with it keeps its own.
#[test]
fn clear_after_defaults_come_from_the_configuration_by_kind() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, extra: &str| {
        let text = format!(
            "name = \"{name}\"\nhosting = \"external\"\ncommand = [\"x\"]\nclasses = [\"{name}.a\"]\n{extra}"
        );
        std::fs::write(dir.path().join(format!("{name}.toml")), text).unwrap();
    };
    write("plain", "");
    write("counting", "kind = \"counter\"\n");
    write("piping", "kind = \"io\"\n");
    write("own", "kind = \"counter\"\nclear_after = \"7s\"\n");
    let mut config = crate::HostConfig::with_dirs(
        purveyor_protocol::HostMode::Embedded,
        vec![dir.path().into()],
    );
    config.clear_after.apply("counter=42s").unwrap();
    let registry = crate::registry::Registry::build(&config, std::iter::empty(), None, None);
    let clear = |name: &str| {
        registry
            .slots()
            .values()
            .find(|s| s.manifest().name.as_str() == name)
            .unwrap()
            .manifest()
            .clear_after
    };
    assert_eq!(clear("plain"), Duration::from_secs(300));
    assert_eq!(clear("counting"), Duration::from_secs(42));
    assert_eq!(clear("piping"), Duration::from_secs(60));
    assert_eq!(clear("own"), Duration::from_secs(7));
    assert_eq!(
        config.clear_after.apply("disk=1s").unwrap_err(),
        "unknown provider kind \"disk\" (expected instance, counter, event or io)"
    );
    assert_eq!(
        config.clear_after.apply("io=5ms").unwrap_err(),
        "5ms is shorter than the minimum of 100ms"
    );
}

#[test]
fn load_dir_reports_every_bad_file_and_keeps_good_ones() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("demo.toml"), GOOD).unwrap();
    std::fs::write(dir.path().join("bad.toml"), "name = 1").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
    let (good, bad) = load_dir(dir.path());
    assert_eq!(good.len(), 1);
    assert_eq!(bad.len(), 1);
    assert!(bad[0].file.ends_with("bad.toml"));
}

/// Found by the `configuration_files` fuzz target: the parser's error offset fell inside a
/// two-byte character, and finding the key on its line sliced the text there (a panic).
#[test]
fn an_error_inside_a_character_is_reported_not_a_panic() {
    let errors = parse("\"\\\u{80}").unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].field, None);
}
