//! Dialogs in the terminal: the generic form renderer every command uses for in-call
//! dialogs, and `purveyor agent`, which shows spontaneous ones (`docs/dialogs.md`).
//!
//! Everything is drawn on stderr, so a command's output on stdout stays clean for pipes
//! and `--json`. A secret field is read with the terminal's echo off and is never shown.

use std::io::{BufRead, IsTerminal, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, bail};
use purveyor_client::{
    Button, Client, DialogInput, DialogUi, FieldKind, Form, FormUpdate, ModuleUi, OpenDialog,
    Progress, UiAction,
};
use purveyor_model::{Instance, Value};

/// How many times a field is asked before the dialog is given up.
const TRIES: u32 = 3;

/// The generic renderer. `modal`: the buttons are asked for at once (an in-call dialog,
/// the command waits anyway); otherwise they are listed and chosen later (the agent).
pub struct TerminalUi {
    modal: bool,
}

impl TerminalUi {
    pub fn new(modal: bool) -> Self {
        TerminalUi { modal }
    }
}

/// The UI for commands: trusted UI modules first, then the terminal.
pub fn command_ui(module_dirs: Vec<PathBuf>) -> Box<dyn DialogUi + Send> {
    Box::new(ModuleUi::new(module_dirs, TerminalUi::new(true)))
}

fn say(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{text}");
    let _ = err.flush();
}

fn prompt(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "{text}");
    let _ = err.flush();
}

/// A line from stdin, without its newline; `None` at the end of input.
fn read_line() -> Option<String> {
    let mut line = String::new();
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim_end_matches(['\n', '\r']).to_string()),
    }
}

/// A line read with the terminal's echo off (when stdin is a terminal).
fn read_secret() -> Option<String> {
    let stdin = std::io::stdin();
    let fd = stdin.as_raw_fd();
    // SAFETY: a zeroed termios is a valid out-parameter for tcgetattr.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd is stdin; `saved` is writable.
    let tty = stdin.is_terminal() && unsafe { libc::tcgetattr(fd, &mut saved) } == 0;
    if tty {
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        quiet.c_lflag |= libc::ECHONL;
        // SAFETY: fd is a terminal; `quiet` is a valid termios.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    }
    let line = read_line();
    if tty {
        // SAFETY: restores the settings read above.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    }
    line
}

fn progress_line(p: &Progress) -> String {
    let width = 20u64;
    let done = p.done.min(p.total);
    match (done * width).checked_div(p.total) {
        Some(filled) => format!(
            "  [{}{}] {}% {}",
            "#".repeat(filled as usize),
            ".".repeat((width - filled) as usize),
            done * 100 / p.total,
            p.text
        ),
        None => format!("  [{}] {}", p.done, p.text),
    }
}

fn menu(buttons: &[Button]) -> String {
    buttons
        .iter()
        .enumerate()
        .map(|(i, b)| format!("[{}] {}", i + 1, b.label))
        .collect::<Vec<_>>()
        .join("  ")
}

/// The button a line names: its number, its name or its label (any case).
pub fn pick(buttons: &[Button], line: &str) -> Option<Button> {
    let line = line.trim();
    if let Ok(n) = line.parse::<usize>() {
        return buttons.get(n.wrapping_sub(1)).cloned();
    }
    buttons
        .iter()
        .find(|b| b.name.as_str().eq_ignore_ascii_case(line) || b.label.eq_ignore_ascii_case(line))
        .cloned()
}

impl TerminalUi {
    /// Asks every field; `None` when the user gave up (end of input, or no valid answer).
    fn fields(&self, form: &Form) -> Option<Instance> {
        let mut values = Instance::new();
        for field in &form.fields {
            let mut value = None;
            for _ in 0..TRIES {
                match self.ask(field) {
                    Ask::Value(v) => {
                        value = Some(v);
                        break;
                    }
                    Ask::Again(why) => say(&format!("  {why}")),
                    Ask::End => return None,
                }
            }
            values.insert(field.name.clone(), value?);
        }
        Some(values)
    }

    fn ask(&self, field: &purveyor_client::Field) -> Ask {
        let label = &field.label;
        let required = |empty: bool| field.required && empty;
        match &field.kind {
            FieldKind::Text { default } => {
                if default.is_empty() {
                    prompt(&format!("{label}: "));
                } else {
                    prompt(&format!("{label} [{default}]: "));
                }
                let Some(line) = read_line() else {
                    return Ask::End;
                };
                let text = if line.is_empty() {
                    default.clone()
                } else {
                    line
                };
                if required(text.is_empty()) {
                    return Ask::Again("an answer is required".into());
                }
                Ask::Value(Value::String(text))
            }
            FieldKind::Secret => {
                prompt(&format!("{label} (hidden): "));
                let Some(line) = read_secret() else {
                    return Ask::End;
                };
                if required(line.is_empty()) {
                    return Ask::Again("an answer is required".into());
                }
                Ask::Value(Value::String(line))
            }
            FieldKind::Number { min, max, default } => {
                match default {
                    Some(d) => prompt(&format!("{label} [{d}]: ")),
                    None => prompt(&format!("{label}: ")),
                }
                let Some(line) = read_line() else {
                    return Ask::End;
                };
                let n = match (line.trim(), default) {
                    ("", Some(d)) => *d,
                    (text, _) => match text.parse::<f64>() {
                        Ok(n) if n.is_finite() => n,
                        _ => return Ask::Again(format!("{text:?} is not a number")),
                    },
                };
                if min.is_some_and(|m| n < m) || max.is_some_and(|m| n > m) {
                    return Ask::Again(format!(
                        "{n} is out of range ({} to {})",
                        min.map_or("-inf".into(), |m| m.to_string()),
                        max.map_or("inf".into(), |m| m.to_string())
                    ));
                }
                Ask::Value(Value::F64(n))
            }
            FieldKind::Choice { options, default } => {
                let list: Vec<String> = options
                    .iter()
                    .enumerate()
                    .map(|(i, o)| format!("{}) {o}", i + 1))
                    .collect();
                say(&format!("{label}: {}", list.join("  ")));
                match default.and_then(|d| options.get(d as usize)) {
                    Some(d) => prompt(&format!("choose [{d}]: ")),
                    None => prompt("choose: "),
                }
                let Some(line) = read_line() else {
                    return Ask::End;
                };
                let line = line.trim();
                let chosen = if line.is_empty() {
                    default.and_then(|d| options.get(d as usize)).cloned()
                } else if let Ok(n) = line.parse::<usize>() {
                    options.get(n.wrapping_sub(1)).cloned()
                } else {
                    options
                        .iter()
                        .find(|o| o.eq_ignore_ascii_case(line))
                        .cloned()
                };
                match chosen {
                    Some(c) => Ask::Value(Value::String(c)),
                    None => Ask::Again(format!("{line:?} is not one of the choices")),
                }
            }
            FieldKind::Confirm { default } => {
                prompt(&format!(
                    "{label} [{}]: ",
                    if *default { "Y/n" } else { "y/N" }
                ));
                let Some(line) = read_line() else {
                    return Ask::End;
                };
                match line.trim().to_ascii_lowercase().as_str() {
                    "" => Ask::Value(Value::Bool(*default)),
                    "y" | "yes" => Ask::Value(Value::Bool(true)),
                    "n" | "no" => Ask::Value(Value::Bool(false)),
                    other => Ask::Again(format!("{other:?}: answer y or n")),
                }
            }
        }
    }
}

enum Ask {
    Value(Value),
    Again(String),
    End,
}

impl DialogUi for TerminalUi {
    fn open(&mut self, dialog: &OpenDialog) -> UiAction {
        let form = &dialog.form;
        say("");
        say(&format!(
            "== {} ==  ({}, dialog {})",
            form.title, dialog.provider, dialog.handle
        ));
        if !form.text.is_empty() {
            say(&form.text);
        }
        if let Some(p) = &form.progress {
            say(&progress_line(p));
        }
        let Some(values) = self.fields(form) else {
            say("(no answer: the dialog is closed)");
            return UiAction::Close;
        };
        if form.buttons.is_empty() {
            return UiAction::Send(DialogInput {
                button: None,
                values,
            });
        }
        if !self.modal {
            say(&format!(
                "{}   (type a number and Enter)",
                menu(&form.buttons)
            ));
            return if values.is_empty() {
                UiAction::Wait
            } else {
                UiAction::Send(DialogInput {
                    button: None,
                    values,
                })
            };
        }
        for _ in 0..TRIES {
            prompt(&format!("{}: ", menu(&form.buttons)));
            let Some(line) = read_line() else { break };
            match pick(&form.buttons, &line) {
                Some(b) => {
                    return UiAction::Send(DialogInput {
                        button: Some(b.name),
                        values,
                    });
                }
                None => say(&format!("  {line:?} is not one of the buttons")),
            }
        }
        say("(no answer: the dialog is closed)");
        UiAction::Close
    }

    fn update(&mut self, _handle: u32, update: &FormUpdate) -> UiAction {
        if let Some(title) = &update.title {
            say(&format!("== {title} =="));
        }
        if let Some(text) = &update.text {
            say(&format!("> {text}"));
        }
        if let Some(p) = &update.progress {
            say(&progress_line(p));
        }
        if let Some(buttons) = &update.buttons
            && !self.modal
        {
            say(&format!("{}   (type a number and Enter)", menu(buttons)));
        }
        UiAction::Wait
    }

    fn closed(&mut self, handle: u32, reason: &str) {
        say(&format!("(dialog {handle} closed: {reason})"));
    }
}

/// What the agent's loop needs from the dialog on screen: its handle and buttons.
#[derive(Default)]
struct OnScreen {
    handle: u32,
    buttons: Vec<Button>,
}

/// The agent's UI: renders with modules or the terminal, and remembers the buttons of
/// the dialog on screen, whoever renders it, so typed answers can be mapped to them.
struct AgentUi {
    inner: ModuleUi<TerminalUi>,
    screen: Arc<Mutex<Vec<OnScreen>>>,
}

impl DialogUi for AgentUi {
    fn open(&mut self, dialog: &OpenDialog) -> UiAction {
        self.screen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(OnScreen {
                handle: dialog.handle,
                buttons: dialog.form.buttons.clone(),
            });
        self.inner.open(dialog)
    }

    fn update(&mut self, handle: u32, update: &FormUpdate) -> UiAction {
        if let Some(buttons) = &update.buttons {
            let mut screen = self.screen.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = screen.iter_mut().find(|s| s.handle == handle) {
                s.buttons = buttons.clone();
            }
        }
        self.inner.update(handle, update)
    }

    fn closed(&mut self, handle: u32, reason: &str) {
        self.screen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|s| s.handle != handle);
        self.inner.closed(handle, reason)
    }
}

/// `purveyor agent`: registers as the user's UI agent and shows dialogs until stdin
/// ends or the daemon goes.
pub fn run_agent(mut client: Client, module_dirs: Vec<PathBuf>) -> Result<()> {
    let screen: Arc<Mutex<Vec<OnScreen>>> = Arc::default();
    client.set_dialog_ui(Box::new(AgentUi {
        inner: ModuleUi::new(module_dirs, TerminalUi::new(false)),
        screen: screen.clone(),
    }));
    let handle = client.register_agent()?;
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    say(&format!(
        "purveyor agent {handle}: showing dialogs for uid {uid} (Ctrl-C or end of input stops)"
    ));
    let stdin = std::io::stdin();
    loop {
        client.next_event(Some(Duration::from_millis(50)))?;
        let mut pfd = libc::pollfd {
            fd: stdin.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; a zero timeout does not block.
        if unsafe { libc::poll(&mut pfd, 1, 0) } <= 0 {
            continue;
        }
        let Some(line) = read_line() else {
            say("purveyor agent: end of input; stopping");
            return Ok(());
        };
        if line.trim().is_empty() {
            continue;
        }
        // The answer goes to the dialog opened last that is still open.
        let target = {
            let screen = screen.lock().unwrap_or_else(|p| p.into_inner());
            screen
                .last()
                .map(|s| (s.handle, pick(&s.buttons, &line), s.buttons.clone()))
        };
        match target {
            None => say("(no dialog is open)"),
            Some((_, None, buttons)) => {
                say(&format!("  {line:?} is not one of: {}", menu(&buttons)))
            }
            Some((handle, Some(button), _)) => {
                let input = DialogInput {
                    button: Some(button.name),
                    values: Instance::new(),
                };
                if let Err(e) = client.dialog_send(handle, input) {
                    say(&format!("(dialog {handle}: {e})"));
                }
            }
        }
    }
}

/// Refuses to run the agent where it cannot work.
pub fn check_agent(no_input: bool) -> Result<()> {
    if no_input {
        bail!("purveyor agent shows dialogs and reads answers; it cannot run with --no-input");
    }
    Ok(())
}
