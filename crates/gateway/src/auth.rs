//! Who an HTTP request acts as. TCP carries no peer credentials, so a request without a
//! token is **anonymous**: it acts as the `nobody` user under the daemon's access policy
//! (it reads what every local user may read, such as `system`, `app` and `purveyor` by
//! default) and may only read. A configured bearer token acts as its user, with that
//! user's permissions under the same policy (read-only if the token says so).
//!
//! Tokens are configured by their SHA-256 (so the configuration file holds no secret) and
//! compared in constant time.

use purveyor_host::Caller;
use sha2::{Digest, Sha256};

/// A configured bearer token.
#[derive(Clone)]
pub struct Token {
    pub name: String,
    hash: [u8; 32],
    pub uid: u32,
    pub gid: u32,
    pub read_only: bool,
}

impl std::fmt::Debug for Token {
    // Never prints the hash.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("uid", &self.uid)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// A token from its SHA-256 in hex and the user it acts as.
    pub fn new(name: &str, sha256: &str, user: &str, read_only: bool) -> Result<Self, String> {
        let hash = parse_hex(sha256).ok_or_else(|| {
            "sha256 must be 64 hex digits (the token's SHA-256: `printf %s TOKEN | sha256sum`)"
                .to_string()
        })?;
        let (uid, gid) = purveyor_host::access::user_ids(user)
            .ok_or_else(|| format!("there is no user named {user:?}"))?;
        Ok(Token {
            name: name.to_string(),
            hash,
            uid,
            gid,
            read_only,
        })
    }
}

/// Who a request acts as, and whether it may change anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub caller: Caller,
    /// Put, delete and method calls; never for anonymous requests.
    pub may_write: bool,
    /// The configured token's name; `None` for an anonymous request.
    pub token: Option<String>,
}

impl Identity {
    /// The anonymous identity: the `nobody` user, read-only.
    pub fn anonymous() -> Self {
        let (uid, gid) = purveyor_host::access::user_ids("nobody").unwrap_or((65534, 65534));
        Identity {
            caller: Caller::new(uid, gid, 0),
            may_write: false,
            token: None,
        }
    }

    /// `anonymous` or `token NAME`, for errors and the log.
    pub fn who(&self) -> String {
        match &self.token {
            None => "anonymous".into(),
            Some(name) => format!("token {name}"),
        }
    }
}

/// The identity for a request's `Authorization` header.
pub fn identify(tokens: &[Token], authorization: Option<&str>) -> Result<Identity, String> {
    let Some(header) = authorization else {
        return Ok(Identity::anonymous());
    };
    let Some(secret) = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
    else {
        return Err("the Authorization header must be `Bearer TOKEN`".into());
    };
    let hash: [u8; 32] = Sha256::digest(secret.trim().as_bytes()).into();
    // Every token is compared, each in constant time, so timing says nothing about which
    // (or whether one) matched.
    let mut found = None;
    for token in tokens {
        let same = token
            .hash
            .iter()
            .zip(hash.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
        if same {
            found = Some(token);
        }
    }
    let token =
        found.ok_or_else(|| "the bearer token is not one this gateway knows".to_string())?;
    Ok(Identity {
        caller: Caller::new(token.uid, token.gid, 0),
        may_write: !token.read_only,
        token: Some(token.name.clone()),
    })
}

/// The SHA-256 of `text` in lowercase hex (what a configuration file holds for a token).
pub fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn parse_hex(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_map_to_their_user_and_others_are_refused() {
        let tokens = vec![
            Token::new("ops", &sha256_hex("s3cret"), "root", false).unwrap(),
            Token::new("viewer", &sha256_hex("look"), "root", true).unwrap(),
        ];
        let anonymous = identify(&tokens, None).unwrap();
        assert!(!anonymous.may_write);
        assert_ne!(anonymous.caller.uid, 0);
        let ops = identify(&tokens, Some("Bearer s3cret")).unwrap();
        assert_eq!(
            (ops.caller.uid, ops.may_write, ops.who().as_str()),
            (0, true, "token ops")
        );
        let viewer = identify(&tokens, Some("Bearer look")).unwrap();
        assert!(!viewer.may_write);
        assert!(
            identify(&tokens, Some("Bearer guess"))
                .unwrap_err()
                .contains("not one")
        );
        assert!(
            identify(&tokens, Some("Basic abc"))
                .unwrap_err()
                .contains("Bearer TOKEN")
        );
    }

    #[test]
    fn hashes_are_64_hex_digits() {
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(parse_hex(&sha256_hex("abc")).is_some());
        assert!(parse_hex("abc").is_none());
        assert!(parse_hex(&"zz".repeat(32)).is_none());
    }
}
