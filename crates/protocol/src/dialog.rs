//! Dialogs (protocol minor 5, documented in `docs/dialogs.md`): the forms a provider asks
//! the application to show, and what goes back and forth while one is open.
//!
//! A provider never draws anything: it describes a [`Form`], the host routes it to the
//! client that owns the call (an in-call dialog) or to the user's UI agent (a spontaneous
//! one), and the client renders it — generically from the form, or with a UI module the
//! application trusts. While it is open the provider sends [`FormUpdate`]s and the client
//! sends [`DialogInput`]s; either side may close it.
//!
//! **Invariant:** the values of a [`DialogInput`] are never logged: its `Debug` names the
//! fields and hides what they hold, since a secret field's answer is one of them.

use std::fmt;

use purveyor_model::{Identifier, Instance};
use serde::{Deserialize, Serialize};

/// What a provider asks the user: text, fields to fill in, buttons, a progress bar.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Form {
    pub title: String,
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub fields: Vec<Field>,
    /// The buttons, in order. A form without buttons is answered with its fields alone
    /// (a generic client offers "OK").
    #[serde(default)]
    pub buttons: Vec<Button>,
    #[serde(default)]
    pub progress: Option<Progress>,
    /// A UI module the application may have for this dialog (`phone-keypad`). An
    /// application without it renders the form.
    #[serde(default)]
    pub ui_module: Option<String>,
    /// Data for the UI module, opaque to the host.
    #[serde(default)]
    pub data: Option<Instance>,
}

/// One field of a form. Its answer is the property `name` of the input's values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Field {
    pub name: Identifier,
    pub label: String,
    pub kind: FieldKind,
    /// An empty answer is not accepted.
    #[serde(default)]
    pub required: bool,
}

/// The kinds of field, and the value type of their answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum FieldKind {
    /// A line of text (answered as `str`).
    Text {
        #[serde(default)]
        default: String,
    },
    /// Text never shown, echoed nor logged (answered as `str`).
    Secret,
    /// A number (answered as `f64`), within the bounds given.
    Number {
        #[serde(default)]
        min: Option<f64>,
        #[serde(default)]
        max: Option<f64>,
        #[serde(default)]
        default: Option<f64>,
    },
    /// One of `options` (answered as the option's text).
    Choice {
        options: Vec<String>,
        #[serde(default)]
        default: Option<u32>,
    },
    /// Yes or no (answered as `bool`).
    Confirm {
        #[serde(default)]
        default: bool,
    },
}

/// A button: its `name` comes back in the input that pressing it sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Button {
    pub name: Identifier,
    pub label: String,
}

/// How far along something is: `done` of `total` (`total` 0: unknown).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Progress {
    pub done: u64,
    #[serde(default)]
    pub total: u64,
    #[serde(default)]
    pub text: String,
}

/// A change to an open dialog: every part present replaces the one shown.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct FormUpdate {
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub progress: Option<Progress>,
    #[serde(default)]
    pub buttons: Option<Vec<Button>>,
    /// Data for a UI module.
    #[serde(default)]
    pub data: Option<Instance>,
}

/// What the application sends back: the button pressed (if any) and the fields' values,
/// or intermediate data for the provider.
#[derive(Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DialogInput {
    #[serde(default)]
    pub button: Option<Identifier>,
    #[serde(default)]
    pub values: Instance,
}

impl fmt::Debug for DialogInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The values may hold a secret: only their names are shown.
        let names: Vec<&str> = self.values.values().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("DialogInput")
            .field("button", &self.button)
            .field("values", &names)
            .finish()
    }
}

impl DialogInput {
    /// An input that presses `button`.
    pub fn button(name: &str) -> Result<Self, purveyor_model::NameError> {
        Ok(DialogInput {
            button: Some(Identifier::new(name)?),
            values: Instance::new(),
        })
    }
}

/// From a provider to the host: what it does with its dialog number `dialog` (its own
/// number, chosen by the provider; the host answers with the dialog's handle).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum DialogOp {
    /// Opens a dialog. `call` is the token of the call in progress (the request's `ui`)
    /// for an in-call dialog, 0 for a spontaneous one, which goes to `agent` when given
    /// (it must belong to `user`), else to the most recent agent of `user` (the caller's
    /// user when neither is given). Answered with `opened` or `refused`.
    Open {
        form: Form,
        #[serde(default)]
        call: u32,
        #[serde(default)]
        user: Option<u32>,
        #[serde(default)]
        agent: Option<u32>,
        /// Milliseconds the dialog may stay open; 0 takes the host's default.
        #[serde(default)]
        deadline_ms: u64,
    },
    Update(FormUpdate),
    /// Closes the dialog; the application is told `reason`.
    Close {
        reason: String,
    },
}

/// From the host to a provider, about its dialog number `dialog`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum DialogEvent {
    /// The dialog is open, with this handle (what applications and logs call it).
    Opened { handle: u32 },
    /// It could not be opened: why (no agent, no UI available, another user's agent...).
    Refused { message: String },
    /// The application sent input.
    Input(DialogInput),
    /// It is closed (by the application, its deadline, or because the application went
    /// away): why.
    Closed { reason: String },
    /// The dialog is open with this handle and has a direct channel to the application
    /// (`docs/dialogs.md`, "Direct channels"): the socket `fd` of this process, which
    /// the provider now owns, carries [`DialogMessage`] frames both ways. The host sends
    /// it to an isolated worker with `fd` -1, the socket on the worker's attach socket;
    /// the worker gives its library the descriptor.
    Direct { handle: u32, fd: i32 },
}

/// What goes on a dialog's direct channel, each way, as `[u32 LE length][payload]`
/// frames in the binary encoding, at most [`DIALOG_FRAME_MAX`] bytes: the provider sends
/// updates, the application inputs. Closing is not on the channel: each side shuts its
/// writing half, then says so through the host (so everything it wrote comes first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum DialogMessage {
    Update(FormUpdate),
    Input(DialogInput),
}

/// The largest payload of a frame on a dialog's direct channel.
pub const DIALOG_FRAME_MAX: u32 = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;
    use purveyor_model::Value;

    #[test]
    fn an_inputs_debug_never_shows_its_values() {
        let input = DialogInput {
            button: Some(Identifier::new("ok").unwrap()),
            values: Instance::from_pairs([("password", Value::String("hunter2".into()))]),
        };
        let shown = format!("{input:?}");
        assert!(shown.contains("password"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn json_forms_are_the_documented_ones() {
        let form: Form = serde_json::from_str(
            r#"{"title":"Delete?","fields":[{"name":"sure","label":"Really?","kind":{"confirm":{}}}],
                "buttons":[{"name":"ok","label":"OK"}]}"#,
        )
        .unwrap();
        assert_eq!(form.fields[0].kind, FieldKind::Confirm { default: false });
        let op: DialogOp =
            serde_json::from_str(r#"{"open":{"form":{"title":"Pick up"},"user":1000}}"#).unwrap();
        assert!(matches!(
            op,
            DialogOp::Open {
                call: 0,
                user: Some(1000),
                ..
            }
        ));
        assert_eq!(
            serde_json::to_string(&DialogEvent::Opened { handle: 7 }).unwrap(),
            r#"{"opened":{"handle":7}}"#
        );
    }
}
