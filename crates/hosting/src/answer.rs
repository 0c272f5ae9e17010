//! How a get or an enumerate becomes a provider call, and how the provider's reply becomes
//! the client's answer. Shared by the host (every hosting model) and by an isolated
//! worker's direct channels (`worker.rs`), so a client gets the same answer, and the same
//! errors, whichever way its request went.
//!
//! Nothing here records anything: an error with [`ErrorCode::ProviderFailed`] is the
//! provider's fault (a reply of the wrong kind, an instance that does not fit its schema,
//! a failure it reported) and the caller counts it as the provider's error.

use purveyor_model::{ClassPath, ClassSchema, Instance, InstanceKey, ProviderName};
use purveyor_protocol::{ErrorCode, InstanceList, ProviderReply, ReadCall, RemoteError, Response};
use purveyor_provider::ProviderError;

/// What the answer needs to know of the provider: its name and the reads its manifest
/// offers.
#[derive(Clone, Copy)]
pub struct Offers<'a> {
    pub name: &'a ProviderName,
    pub get: bool,
    pub enumerate: bool,
}

impl Offers<'_> {
    /// An error about this provider, carrying its name.
    pub fn error(&self, code: ErrorCode, message: impl Into<String>) -> RemoteError {
        RemoteError::new(code, message).with_provider(self.name.clone())
    }

    /// The error for a read its manifest does not offer.
    pub fn not_offered(&self, what: &str) -> RemoteError {
        self.error(
            ErrorCode::Unsupported,
            format!(
                "provider {} does not offer {what} (its manifest's capabilities)",
                self.name
            ),
        )
    }

    /// A get's provider call, after checking the key against `schema`: `get` when the
    /// provider offers it, else `enumerate` (the answer then picks the instance).
    pub fn get_call<'a>(
        &self,
        schema: &ClassSchema,
        class: &'a ClassPath,
        key: &'a InstanceKey,
    ) -> Result<ReadCall<'a>, RemoteError> {
        check_full_key(schema, key)?;
        if self.get {
            Ok(ReadCall::Get { class, key })
        } else if self.enumerate {
            Ok(ReadCall::Enumerate { class })
        } else {
            Err(self.error(
                ErrorCode::Unsupported,
                format!("provider {} offers neither get nor enumerate", self.name),
            ))
        }
    }

    /// A get's response from the provider's reply to the call [`Offers::get_call`] made.
    pub fn get_answer(
        &self,
        schema: &ClassSchema,
        class: &ClassPath,
        key: &InstanceKey,
        asked_get: bool,
        reply: ProviderReply,
    ) -> Result<Response, RemoteError> {
        let found = match (asked_get, reply) {
            (true, ProviderReply::Instance(found)) => found,
            (false, ProviderReply::Instances(all)) => all.into_iter().find(|i| i.matches(key)),
            (true, other) => return Err(self.unexpected("get", &other)),
            (false, other) => return Err(self.unexpected("enumerate", &other)),
        };
        match found {
            Some(instance) => {
                self.check_answer(schema, std::slice::from_ref(&instance))?;
                Ok(Response::Instance(instance))
            }
            None => Err(RemoteError::new(
                ErrorCode::NotFound,
                format!("no instance of {class} with {key}"),
            )),
        }
    }

    /// An enumerate's provider call, after checking the selector: `get` when the selector
    /// is a full key and the provider offers get, else `enumerate`.
    pub fn enumerate_call<'a>(
        &self,
        schema: &ClassSchema,
        class: &'a ClassPath,
        selector: &'a InstanceKey,
    ) -> Result<ReadCall<'a>, RemoteError> {
        check_selector(schema, selector)?;
        Ok(if selector.is_full_key(schema) && self.get {
            ReadCall::Get {
                class,
                key: selector,
            }
        } else {
            ReadCall::Enumerate { class }
        })
    }

    /// An enumerate's response from the provider's reply: the instances the selector
    /// matches.
    pub fn enumerate_answer(
        &self,
        schema: &ClassSchema,
        class: ClassPath,
        selector: &InstanceKey,
        asked_get: bool,
        reply: ProviderReply,
    ) -> Result<Response, RemoteError> {
        let instances: Vec<Instance> = match (asked_get, reply) {
            (true, ProviderReply::Instance(found)) => found.into_iter().collect(),
            (false, ProviderReply::Instances(mut all)) => {
                all.retain(|i| i.matches(selector));
                all
            }
            (true, other) => return Err(self.unexpected("get", &other)),
            (false, other) => return Err(self.unexpected("enumerate", &other)),
        };
        self.check_answer(schema, &instances)?;
        Ok(Response::Instances(InstanceList { class, instances }))
    }

    /// The error for a reply of the wrong kind to `what`.
    pub fn unexpected(&self, what: &str, reply: &ProviderReply) -> RemoteError {
        self.error(
            ErrorCode::ProviderFailed,
            format!(
                "provider {} answered `{}` to {what}",
                self.name,
                reply.kind()
            ),
        )
    }

    /// A provider's answer must fit its own schema; one that does not is a provider
    /// failure.
    pub fn check_answer(
        &self,
        schema: &ClassSchema,
        instances: &[Instance],
    ) -> Result<(), RemoteError> {
        for instance in instances {
            if let Err(problem) = schema.check_instance(instance) {
                return Err(self.error(
                    ErrorCode::ProviderFailed,
                    format!("provider {} returned a bad instance: {problem}", self.name),
                ));
            }
        }
        Ok(())
    }

    /// The client's error for a failure the provider reported.
    pub fn provider_error(&self, error: ProviderError) -> RemoteError {
        let name = self.name;
        let (code, message) = match error {
            ProviderError::NotFound(m) => (ErrorCode::NotFound, m),
            ProviderError::Unsupported(m) => {
                (ErrorCode::Unsupported, format!("provider {name}: {m}"))
            }
            ProviderError::InvalidArgument(m) => (ErrorCode::InvalidRequest, m),
            ProviderError::AccessDenied(m) => (ErrorCode::AccessDenied, m),
            other => (
                ErrorCode::ProviderFailed,
                format!("provider {name} failed: {other}"),
            ),
        };
        self.error(code, message)
    }
}

/// `key` must name exactly the class's key properties, with their types.
pub fn check_full_key(schema: &ClassSchema, key: &InstanceKey) -> Result<(), RemoteError> {
    check_selector(schema, key)?;
    if key.is_full_key(schema) {
        return Ok(());
    }
    let class = schema.path();
    let keys: Vec<&str> = schema.keys().map(|k| k.name.as_str()).collect();
    Err(RemoteError::new(
        ErrorCode::InvalidRequest,
        if keys.is_empty() {
            format!("{class} is a singleton: name it without a key")
        } else {
            format!(
                "{class} is keyed by {}: give exactly those properties (got {key})",
                keys.join(", ")
            )
        },
    ))
}

/// A selector may name only the class's properties, with their types.
pub fn check_selector(schema: &ClassSchema, selector: &InstanceKey) -> Result<(), RemoteError> {
    if let Some(name) = selector.unknown_property(schema) {
        return Err(RemoteError::new(
            ErrorCode::InvalidRequest,
            format!(
                "class {} has no property {:?}",
                schema.path(),
                name.as_str()
            ),
        ));
    }
    for (name, value) in selector.values() {
        if let Some(prop) = schema.property(name.as_str())
            && !value.conforms_to(prop.ty)
        {
            return Err(RemoteError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "property {:?} of {} has type {}, not {}",
                    name.as_str(),
                    schema.path(),
                    prop.ty,
                    value.value_type()
                ),
            ));
        }
    }
    Ok(())
}
