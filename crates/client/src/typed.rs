//! Turning a response into the type a typed call promises.

use purveyor_model::{ClassPath, ClassSchema, Identifier, Instance, InstanceKey, Value};
use purveyor_protocol::{
    ClassList, HostStatus, ProviderStatus, QueryRows, ReloadReport, Request, Response,
};

use crate::ClientError;

pub(crate) fn unexpected(wanted: &str, got: &Response) -> ClientError {
    ClientError::protocol(format!("expected {wanted} in the reply, got {got:?}"))
}

macro_rules! expect {
    ($fn:ident, $variant:ident, $ty:ty, $what:literal) => {
        pub(crate) fn $fn(response: Response) -> Result<$ty, ClientError> {
            match response {
                Response::$variant(v) => Ok(v),
                other => Err(unexpected($what, &other)),
            }
        }
    };
}

expect!(status, Status, HostStatus, "a status");
expect!(classes, Classes, ClassList, "a class list");
expect!(class, Class, ClassSchema, "a class");
expect!(instance, Instance, Instance, "an instance");
expect!(providers, Providers, Vec<ProviderStatus>, "a provider list");
expect!(rows, Rows, QueryRows, "rows");
expect!(reloaded, Reloaded, ReloadReport, "a reload report");

pub(crate) fn instances(response: Response) -> Result<Vec<Instance>, ClientError> {
    match response {
        Response::Instances(list) => Ok(list.instances),
        other => Err(unexpected("instances", &other)),
    }
}

pub(crate) fn pong(response: Response) -> Result<(), ClientError> {
    match response {
        Response::Pong => Ok(()),
        other => Err(unexpected("a pong", &other)),
    }
}

pub(crate) fn done(response: Response) -> Result<(), ClientError> {
    match response {
        Response::Done => Ok(()),
        other => Err(unexpected("done", &other)),
    }
}

pub(crate) fn returned(response: Response) -> Result<Option<Value>, ClientError> {
    match response {
        Response::Returned(v) => Ok(v),
        other => Err(unexpected("a method's result", &other)),
    }
}

pub(crate) fn subscribed(response: Response) -> Result<u32, ClientError> {
    match response {
        Response::Subscribed { handle } => Ok(handle),
        other => Err(unexpected("a subscription handle", &other)),
    }
}

pub(crate) fn put(class: &ClassPath, instance: Instance) -> Request {
    Request::Put {
        class: class.clone(),
        instance,
    }
}

pub(crate) fn subscribe(
    class: &ClassPath,
    event: Option<&Identifier>,
    filter: Vec<purveyor_model::Condition>,
) -> Request {
    Request::Subscribe {
        class: class.clone(),
        event: event.cloned(),
        filter,
    }
}

pub(crate) fn delete(class: &ClassPath, key: &InstanceKey) -> Request {
    Request::Delete {
        class: class.clone(),
        key: key.clone(),
    }
}

pub(crate) fn call(
    class: &ClassPath,
    method: &Identifier,
    key: &InstanceKey,
    args: Instance,
) -> Request {
    Request::Call {
        class: class.clone(),
        method: method.clone(),
        key: key.clone(),
        args,
    }
}
