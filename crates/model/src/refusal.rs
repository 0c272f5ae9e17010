//! Why a binary decode was refused.
//!
//! postcard keeps only the kind of a custom deserialization error, not its message, so a
//! peer would be told "Serde Deserialization Error" and nothing more. The model's own
//! deserializers (identifiers, instances and their tables of names) leave the message
//! here, per thread, and the protocol's decoder adds it to its error.

use std::cell::RefCell;

thread_local! {
    static REFUSAL: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// A custom decoding error whose message is also kept for [`take_refusal`].
pub(crate) fn refuse<E: serde::de::Error>(message: String) -> E {
    let error = E::custom(&message);
    REFUSAL.with(|r| *r.borrow_mut() = Some(message));
    error
}

/// Why the last value the model refused to decode on this thread was refused, if one was
/// (and forgets it). Binary decoders call it before decoding (to forget an old reason)
/// and after an error (to name what was wrong).
pub fn take_refusal() -> Option<String> {
    REFUSAL.with(|r| r.borrow_mut().take())
}
