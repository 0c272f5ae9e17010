//! Turning a response into the type a typed call promises.

use purveyor_model::{ClassSchema, Instance};
use purveyor_protocol::{ClassList, HostStatus, ProviderStatus, Response};

use crate::ClientError;

fn unexpected(wanted: &str, got: &Response) -> ClientError {
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
