//! An example UI module (`docs/dialogs.md`): the phone example's dialogs drawn as a
//! handset instead of a generic form. The application loads it from a directory it
//! trusts (`purveyor agent --ui-modules target/debug`); the provider only names it
//! (`ui_module = "phone-keypad"`). Answers still come from the agent (type a number).

use std::collections::HashMap;
use std::io::Write;

use purveyor_client::{DialogUi, FormUpdate, OpenDialog, UiAction, export_ui_module};

/// What is on each handset's display.
#[derive(Default)]
pub struct Keypad {
    screens: HashMap<u32, Screen>,
}

#[derive(Default)]
struct Screen {
    number: String,
    text: String,
    keys: Vec<String>,
}

impl Keypad {
    pub fn new() -> Self {
        Keypad::default()
    }

    fn draw(&self, handle: u32) {
        let Some(s) = self.screens.get(&handle) else {
            return;
        };
        let keys = s
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| format!("({}) {k}", i + 1))
            .collect::<Vec<_>>()
            .join("  ");
        let width = 44;
        let line = |text: &str| format!("  | {text:<w$} |", w = width - 4);
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "   {}", "_".repeat(width - 2));
        let _ = writeln!(err, "{}", line(&format!("PHONE  {}", s.number)));
        let _ = writeln!(err, "{}", line(&s.text));
        let _ = writeln!(err, "{}", line(&keys));
        let _ = writeln!(err, "  |{}|", "_".repeat(width - 2));
        let _ = err.flush();
    }
}

impl DialogUi for Keypad {
    fn open(&mut self, dialog: &OpenDialog) -> UiAction {
        let number = dialog
            .form
            .data
            .as_ref()
            .and_then(|d| d.get("number"))
            .map(|v| v.to_string().trim_matches('"').to_string())
            .unwrap_or_default();
        self.screens.insert(
            dialog.handle,
            Screen {
                number,
                text: dialog.form.text.clone(),
                keys: dialog
                    .form
                    .buttons
                    .iter()
                    .map(|b| b.label.clone())
                    .collect(),
            },
        );
        self.draw(dialog.handle);
        UiAction::Wait
    }

    fn update(&mut self, handle: u32, update: &FormUpdate) -> UiAction {
        if let Some(s) = self.screens.get_mut(&handle) {
            if let Some(text) = &update.text {
                s.text.clone_from(text);
            }
            if let Some(buttons) = &update.buttons {
                s.keys = buttons.iter().map(|b| b.label.clone()).collect();
            }
        }
        self.draw(handle);
        UiAction::Wait
    }

    fn closed(&mut self, handle: u32, reason: &str) {
        self.screens.remove(&handle);
        let _ = writeln!(std::io::stderr(), "  [handset down: {reason}]");
    }
}

export_ui_module!(Keypad::new);
