//! Example providers with dialogs (`docs/dialogs.md`), one library serving two manifests:
//!
//! - **phone** (`manifest/phone.toml`): class `phone.line`. `purveyor call phone.line dial
//!   number=555-0100` opens a *spontaneous* dialog on the caller's UI agent (`purveyor
//!   agent`): "pick up the handset", then "talking", then "they hung up, you may hang up
//!   now" — the seed's modem example. The call returns at once; the conversation goes on
//!   in the agent. With no agent, `dial` fails at once with "no agent".
//! - **confirm** (`manifest/confirm.toml`): class `demo.vault`, whose `destroy` method asks
//!   the caller *in-call* to confirm and to type the vault's passphrase (`purveyor`), and
//!   class `demo.dialog_probe`, whose methods the tests and the benchmark drive.
//!
//! Build: `cargo build -p purveyor-example-dialogs` → `target/debug/libpurveyor_dialogs.so`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use purveyor_provider::model::{
    ClassPath, ClassSchema, Identifier, Instance, InstanceKey, MethodDef, ParamDef, PropertyDef,
    ScalarType, Semantic, Unit, Value, ValueType,
};
use purveyor_provider::{
    Button, CallContext, Dialog, DialogError, DialogTarget, Field, FieldKind, Form, FormUpdate,
    HostHandle, Progress, Provider, ProviderError, export_provider,
};

/// The passphrase every example vault has.
pub const PASSPHRASE: &str = "purveyor";
/// How long a person has to answer before the provider gives up.
const PATIENCE: Duration = Duration::from_secs(120);

enum Kind {
    Phone,
    Confirm,
}

pub struct Dialogs {
    kind: Kind,
    host: OnceLock<HostHandle>,
    state: Arc<State>,
}

/// What the provider's threads share (a phone conversation runs on a thread of its own).
pub struct State {
    /// phone: the line's state and number.
    line: Mutex<(String, String)>,
    /// confirm: vaults by name, and how the last dialog ended.
    vaults: Mutex<BTreeMap<String, u64>>,
    last_outcome: Mutex<String>,
}

impl std::ops::Deref for Dialogs {
    type Target = State;
    fn deref(&self) -> &State {
        &self.state
    }
}

impl Dialogs {
    /// `phone…` serves `phone.line`; any other name the confirm classes.
    pub fn for_name(name: &str) -> Result<Self, ProviderError> {
        Ok(Dialogs {
            kind: if name.starts_with("phone") {
                Kind::Phone
            } else {
                Kind::Confirm
            },
            host: OnceLock::new(),
            state: Arc::new(State {
                line: Mutex::new(("idle".into(), String::new())),
                vaults: Mutex::new(
                    [("photos", 812), ("taxes", 37), ("recipes", 120)]
                        .into_iter()
                        .map(|(n, files)| (n.to_string(), files))
                        .collect(),
                ),
                last_outcome: Mutex::new(String::new()),
            }),
        })
    }
}

impl State {
    fn outcome(&self, what: impl Into<String>) {
        *self.last_outcome.lock().unwrap_or_else(|p| p.into_inner()) = what.into();
    }

    fn set_line(&self, state: &str, number: &str) {
        *self.line.lock().unwrap_or_else(|p| p.into_inner()) = (state.into(), number.into());
    }
}

impl Dialogs {
    fn host(&self, ctx: &CallContext) -> Result<HostHandle, ProviderError> {
        self.host
            .get()
            .or(ctx.host())
            .cloned()
            .ok_or_else(|| ProviderError::Failed("this host does not route dialogs".into()))
    }
}

fn id(s: &str) -> Identifier {
    Identifier::new(s).expect("valid name")
}

fn button(name: &str, label: &str) -> Button {
    Button {
        name: id(name),
        label: label.into(),
    }
}

fn text(update: &str) -> FormUpdate {
    FormUpdate {
        text: Some(update.into()),
        ..FormUpdate::default()
    }
}

fn arg_str(args: &Instance, name: &str) -> String {
    match args.get(name) {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    }
}

fn arg_u64(args: &Instance, name: &str) -> Option<u64> {
    match args.get(name) {
        Some(Value::U64(n)) => Some(*n),
        _ => None,
    }
}

impl Provider for Dialogs {
    fn classes(&self) -> Vec<ClassSchema> {
        let p = PropertyDef::new;
        let string = Some(ValueType::Scalar(ScalarType::String));
        match self.kind {
            Kind::Phone => vec![
                ClassSchema::new(
                    ClassPath::new("phone.line").expect("valid"),
                    "A pretend phone line",
                    vec![
                        p("state", "string", Unit::None, Semantic::Discrete, "idle, ringing or talking"),
                        p("number", "string", Unit::None, Semantic::Discrete, "the number dialled last"),
                    ],
                    vec![MethodDef {
                        name: id("dial"),
                        params: vec![
                            ParamDef::new("number", "string", false, "the number to call"),
                            ParamDef::new("talk_ms", "u64", true, "how long the other side talks (default 1500)"),
                        ],
                        result: string,
                        description: "Dials: the caller's UI agent is asked to pick up the handset".into(),
                    }],
                    Vec::new(),
                )
                .expect("valid schema"),
            ],
            Kind::Confirm => vec![
                ClassSchema::new(
                    ClassPath::new("demo.vault").expect("valid"),
                    "Vaults of files; destroying one needs the user's confirmation",
                    vec![
                        p("name", "string", Unit::None, Semantic::Key, "the vault"),
                        p("files", "u64", Unit::Count, Semantic::Gauge, "files in it"),
                    ],
                    vec![MethodDef {
                        name: id("destroy"),
                        params: Vec::new(),
                        result: string,
                        description: "Destroys the vault, after the caller confirms and types its passphrase".into(),
                    }],
                    Vec::new(),
                )
                .expect("valid schema"),
                ClassSchema::new(
                    ClassPath::new("demo.dialog_probe").expect("valid"),
                    "Dialog behaviours for tests and benchmarks",
                    vec![p(
                        "last_outcome",
                        "string",
                        Unit::None,
                        Semantic::Discrete,
                        "how the provider's last dialog ended",
                    )],
                    vec![
                        MethodDef {
                            name: id("burst"),
                            params: vec![
                                ParamDef::new("count", "u64", false, "updates sent right after opening"),
                                ParamDef::new("deadline_ms", "u64", true, "the dialog's deadline"),
                                ParamDef::new("after_button", "bool", true, "wait for a button before the updates"),
                            ],
                            result: string,
                            description: "Opens a dialog on the caller's agent, sends `count` updates at once (after a first button if `after_button`), waits for a button".into(),
                        },
                        MethodDef {
                            name: id("round_trips"),
                            params: vec![ParamDef::new("count", "u64", false, "exchanges to time")],
                            result: string,
                            description: "Times `count` update → agent input round trips; returns their latencies in ns, comma-separated".into(),
                        },
                        MethodDef {
                            name: id("probe_agent"),
                            params: vec![
                                ParamDef::new("agent", "u64", false, "an agent handle"),
                                ParamDef::new("user", "u64", false, "the user the dialog is for"),
                            ],
                            result: string,
                            description: "Tries to open a dialog on one agent for one user; returns the host's answer".into(),
                        },
                        MethodDef {
                            name: id("ask"),
                            params: Vec::new(),
                            result: string,
                            description: "Asks the caller in-call for a button; returns it".into(),
                        },
                    ],
                    Vec::new(),
                )
                .expect("valid schema"),
            ],
        }
    }

    fn attach(&self, host: HostHandle) {
        let _ = self.host.set(host);
    }

    fn enumerate(
        &self,
        class: &ClassPath,
        _ctx: &CallContext,
    ) -> Result<Vec<Instance>, ProviderError> {
        match class.as_str() {
            "phone.line" => {
                let (state, number) = self.line.lock().unwrap_or_else(|p| p.into_inner()).clone();
                Ok(vec![Instance::from_pairs([
                    ("state", Value::String(state)),
                    ("number", Value::String(number)),
                ])])
            }
            "demo.vault" => Ok(self
                .vaults
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(name, files)| {
                    Instance::from_pairs([
                        ("name", Value::String(name.clone())),
                        ("files", Value::U64(*files)),
                    ])
                })
                .collect()),
            "demo.dialog_probe" => Ok(vec![Instance::from_pairs([(
                "last_outcome",
                Value::String(
                    self.last_outcome
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone(),
                ),
            )])]),
            other => Err(ProviderError::NotFound(format!("no class {other}"))),
        }
    }

    fn call(
        &self,
        class: &ClassPath,
        key: &InstanceKey,
        method: &Identifier,
        args: Instance,
        ctx: &CallContext,
    ) -> Result<Option<Value>, ProviderError> {
        let done = |s: String| Ok(Some(Value::String(s)));
        match (class.as_str(), method.as_str()) {
            ("phone.line", "dial") => done(self.dial(&args, ctx)?),
            ("demo.vault", "destroy") => done(self.destroy(key, ctx)?),
            ("demo.dialog_probe", "burst") => done(self.burst(&args, ctx)?),
            ("demo.dialog_probe", "round_trips") => done(self.round_trips(&args, ctx)?),
            ("demo.dialog_probe", "probe_agent") => {
                let target = DialogTarget::Agent {
                    agent: arg_u64(&args, "agent").unwrap_or(0) as u32,
                    user: arg_u64(&args, "user").unwrap_or(0) as u32,
                };
                let form = Form {
                    title: "Probe".into(),
                    ..Form::default()
                };
                done(match self.host(ctx)?.open_dialog(form, target) {
                    Ok(dialog) => {
                        dialog.close("probe done");
                        "opened".into()
                    }
                    Err(e) => e.to_string(),
                })
            }
            ("demo.dialog_probe", "ask") => {
                let dialog = ctx.dialog(Form {
                    title: "Pick one".into(),
                    buttons: vec![button("yes", "Yes"), button("no", "No")],
                    ..Form::default()
                });
                let dialog = dialog.inspect_err(|e| self.outcome(e.to_string()))?;
                let answer = self.wait(&dialog, PATIENCE)?;
                dialog.close("answered");
                self.outcome("answered");
                done(answer.to_string())
            }
            (c, m) => Err(ProviderError::Unsupported(format!("{c} has no method {m}"))),
        }
    }
}

impl State {
    /// Waits for a button; a dialog closed by the other side is recorded and an error.
    fn wait(&self, dialog: &Dialog, patience: Duration) -> Result<Identifier, ProviderError> {
        match dialog.wait_button(patience) {
            Ok(Some(input)) => Ok(input.button.expect("wait_button returns a button")),
            Ok(None) => Err(ProviderError::Failed(
                "nobody answered the dialog in time".into(),
            )),
            Err(e) => {
                self.outcome(e.to_string());
                Err(e.into())
            }
        }
    }
}

impl Dialogs {
    fn dial(&self, args: &Instance, ctx: &CallContext) -> Result<String, ProviderError> {
        let number = arg_str(args, "number");
        let talk = Duration::from_millis(arg_u64(args, "talk_ms").unwrap_or(1500));
        let form = Form {
            title: format!("Phone: calling {number}"),
            text: "Pick up the handset, then choose Talk.".into(),
            buttons: vec![button("talk", "Talk"), button("hang_up", "Hang up")],
            ui_module: Some("phone-keypad".into()),
            data: Some(Instance::from_pairs([(
                "number",
                Value::String(number.clone()),
            )])),
            ..Form::default()
        };
        // Spontaneous: the user's agent, not this call's client, shows it. Opened here so
        // that "no agent" is this call's error, at once.
        let dialog = self
            .host(ctx)?
            .open_dialog(form, DialogTarget::User(ctx.caller.uid))
            .map_err(|e| ProviderError::Failed(format!("cannot reach the user: {e}")))?;
        let handle = dialog.handle();
        self.set_line("ringing", &number);
        let state = self.state.clone();
        let answer = format!("dialling {number}: answer on your UI agent (dialog {handle})");
        std::thread::spawn(move || state.conversation(dialog, &number, talk));
        Ok(answer)
    }
}

impl State {
    fn conversation(&self, dialog: Dialog, number: &str, talk: Duration) {
        let end = |this: &State, how: &str| {
            this.set_line("idle", number);
            this.outcome(how);
        };
        let _ = dialog.update(text(&format!(
            "Ringing {number}... pick up the handset, then choose Talk."
        )));
        match self.wait(&dialog, PATIENCE) {
            Ok(b) if b.as_str() == "talk" => {}
            Ok(_) => {
                dialog.close("you hung up");
                return end(self, "hung up before talking");
            }
            Err(_) => return end(self, "closed before talking"),
        }
        self.set_line("talking", number);
        let _ = dialog.update(FormUpdate {
            text: Some(format!("Connected to {number}. Talking...")),
            buttons: Some(vec![button("hang_up", "Hang up")]),
            ..FormUpdate::default()
        });
        // The other side talks for a while, unless the user hangs up first.
        let started = Instant::now();
        loop {
            let left = talk.saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            match dialog.wait_button(left) {
                Ok(Some(_)) => {
                    dialog.close("you hung up");
                    return end(self, "hung up while talking");
                }
                Ok(None) => {}
                Err(_) => return end(self, "closed while talking"),
            }
        }
        let _ = dialog.update(text(&format!("{number} hung up. You may hang up now.")));
        match self.wait(&dialog, PATIENCE) {
            Ok(_) => {
                dialog.close("call ended");
                end(self, "call ended");
            }
            Err(_) => end(self, "closed after the call"),
        }
    }
}

impl Dialogs {
    fn destroy(&self, key: &InstanceKey, ctx: &CallContext) -> Result<String, ProviderError> {
        let name = match key.get("name") {
            Some(Value::String(s)) => s.clone(),
            _ => {
                return Err(ProviderError::InvalidArgument(
                    "destroy needs name=VAULT".into(),
                ));
            }
        };
        let files = *self
            .vaults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&name)
            .ok_or_else(|| ProviderError::NotFound(format!("no vault {name}")))?;
        let form = Form {
            title: format!("Destroy vault {name}?"),
            text: format!("This deletes {files} files for good."),
            fields: vec![
                Field {
                    name: id("sure"),
                    label: format!("Really destroy {name}?"),
                    kind: FieldKind::Confirm { default: false },
                    required: false,
                },
                Field {
                    name: id("passphrase"),
                    label: "The vault's passphrase".into(),
                    kind: FieldKind::Secret,
                    required: true,
                },
            ],
            buttons: vec![button("destroy", "Destroy"), button("cancel", "Cancel")],
            ..Form::default()
        };
        let dialog = ctx.dialog(form).map_err(|e| {
            self.outcome(e.to_string());
            ProviderError::Failed(format!(
                "{name} was not destroyed: it needs confirmation, and {e}"
            ))
        })?;
        let input = match dialog.wait_button(PATIENCE) {
            Ok(Some(input)) => input,
            Ok(None) => return Err(ProviderError::Failed("nobody confirmed in time".into())),
            Err(e) => {
                self.outcome(e.to_string());
                return Err(e.into());
            }
        };
        let pressed = input.button.as_ref().map(Identifier::as_str);
        let sure = matches!(input.values.get("sure"), Some(Value::Bool(true)));
        let passphrase_ok =
            matches!(input.values.get("passphrase"), Some(Value::String(s)) if s == PASSPHRASE);
        if pressed != Some("destroy") || !sure {
            dialog.close("not destroyed");
            self.outcome("cancelled");
            return Err(ProviderError::Failed(format!(
                "{name} was not destroyed: cancelled"
            )));
        }
        if !passphrase_ok {
            dialog.close("wrong passphrase");
            self.outcome("wrong passphrase");
            return Err(ProviderError::AccessDenied(format!(
                "{name} was not destroyed: wrong passphrase"
            )));
        }
        let _ = dialog.update(FormUpdate {
            progress: Some(Progress {
                done: files,
                total: files,
                text: "shredded".into(),
            }),
            ..FormUpdate::default()
        });
        self.vaults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&name);
        dialog.close("destroyed");
        self.outcome("destroyed");
        Ok(format!("destroyed {name} ({files} files)"))
    }

    fn burst(&self, args: &Instance, ctx: &CallContext) -> Result<String, ProviderError> {
        let count = arg_u64(args, "count").unwrap_or(0);
        let form = Form {
            title: "Burst".into(),
            buttons: vec![button("done", "Done")],
            ..Form::default()
        };
        let to = DialogTarget::User(ctx.caller.uid);
        let host = self.host(ctx)?;
        let opened = match arg_u64(args, "deadline_ms") {
            Some(ms) => host.open_dialog_until(form, to, Duration::from_millis(ms)),
            None => host.open_dialog(form, to),
        };
        let dialog = opened.map_err(|e: DialogError| {
            self.outcome(e.to_string());
            ProviderError::from(e)
        })?;
        if matches!(args.get("after_button"), Some(Value::Bool(true))) {
            self.wait(&dialog, PATIENCE)?;
        }
        for i in 1..=count {
            dialog.update(text(&format!("update {i}")))?;
        }
        let pressed = self.wait(&dialog, PATIENCE)?;
        dialog.close("done");
        self.outcome("done");
        Ok(format!("{count} updates, then {pressed}"))
    }

    fn round_trips(&self, args: &Instance, ctx: &CallContext) -> Result<String, ProviderError> {
        let count = arg_u64(args, "count").unwrap_or(1).max(1);
        let form = Form {
            title: "Round trips".into(),
            ..Form::default()
        };
        let dialog = self
            .host(ctx)?
            .open_dialog(form, DialogTarget::User(ctx.caller.uid))?;
        let mut times = Vec::with_capacity(count as usize);
        for i in 0..count {
            let start = Instant::now();
            dialog.update(text(&i.to_string()))?;
            match dialog.next(PATIENCE)? {
                Some(_) => times.push(start.elapsed().as_nanos().to_string()),
                None => return Err(ProviderError::Failed("the agent stopped answering".into())),
            }
        }
        dialog.close("measured");
        Ok(times.join(","))
    }
}

export_provider!(named Dialogs::for_name);
