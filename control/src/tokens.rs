//! API bearer tokens: made and revoked by `control token …` on the control host, held by the
//! dashboard, checked on every request. Only a SHA-256 of each token is stored: a token is
//! 32 random bytes, so a fast hash is enough (no password to guess), and a copy of the state
//! file gives nobody a usable token.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use crate::store::{now, Store, StoreError};

/// What a token may do. Each API route needs one scope (see `auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read: status, jobs, validation.
    Read,
    /// Create and deploy customers (deploy form, compose bundles).
    Deploy,
    /// Delete customers.
    Delete,
    /// Move tenants between hosts and drain hosts.
    Move,
}

impl Scope {
    /// Every scope, in the order they are documented.
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::Deploy, Scope::Delete, Scope::Move];

    /// The scope's name in flags, the database and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Deploy => "deploy",
            Scope::Delete => "delete",
            Scope::Move => "move",
        }
    }

    /// Parses one scope name.
    pub fn parse(s: &str) -> Result<Self, TokenError> {
        Self::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| {
                TokenError::Invalid(format!(
                    "unknown scope {s:?}: use read, deploy, delete or move"
                ))
            })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a token operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// A name or scope the operator gave is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The state file failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A token as listed (never its secret or hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    /// Operator-chosen name, logged with each request the token makes.
    pub name: String,
    /// What it may do.
    pub scopes: BTreeSet<Scope>,
    /// Seconds since the epoch.
    pub created_at: i64,
    /// Set once revoked; a revoked token is refused at once.
    pub revoked_at: Option<i64>,
}

/// Prefix of every token, so a leaked one is recognisable (secret scanners, logs).
pub const PREFIX: &str = "m8c_";

/// SHA-256 of `bytes` in hex: what is stored of a token (and of an idempotent request).
pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn hash(token: &str) -> String {
    sha256_hex(token.as_bytes())
}

fn parse_scopes(s: &str) -> BTreeSet<Scope> {
    s.split(',').filter_map(|x| Scope::parse(x).ok()).collect()
}

fn join_scopes(scopes: &BTreeSet<Scope>) -> String {
    scopes
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

fn check_name(name: &str) -> Result<(), TokenError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    match ok {
        true => Ok(()),
        false => Err(TokenError::Invalid(format!(
            "token name {name:?}: use 1–64 of [A-Za-z0-9._-] (it appears in logs)"
        ))),
    }
}

/// Makes a token named `name` with `scopes`; returns its secret, shown this once.
pub fn create(store: &Store, name: &str, scopes: &BTreeSet<Scope>) -> Result<String, TokenError> {
    check_name(name)?;
    if scopes.is_empty() {
        return Err(TokenError::Invalid(
            "a token needs at least one scope: --scope read,deploy,delete,move".into(),
        ));
    }
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| TokenError::Invalid("the system's random source failed".into()))?;
    let token = format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let (h, s) = (hash(&token), join_scopes(scopes));
    let taken = store.with(|c| {
        let exists: Option<i64> = c
            .query_row("SELECT id FROM tokens WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?;
        if exists.is_none() {
            c.execute(
                "INSERT INTO tokens (name, hash, scopes, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![name, h, s, now()],
            )?;
        }
        Ok(exists.is_some())
    })?;
    if taken {
        return Err(TokenError::Invalid(format!(
            "a token named {name} exists (revoked or not): choose another name"
        )));
    }
    Ok(token)
}

/// Every token, oldest first.
pub fn list(store: &Store) -> Result<Vec<TokenInfo>, TokenError> {
    Ok(store.with(|c| {
        let mut st =
            c.prepare("SELECT name, scopes, created_at, revoked_at FROM tokens ORDER BY id")?;
        let rows = st.query_map([], |r| {
            Ok(TokenInfo {
                name: r.get(0)?,
                scopes: parse_scopes(&r.get::<_, String>(1)?),
                created_at: r.get(2)?,
                revoked_at: r.get(3)?,
            })
        })?;
        rows.collect()
    })?)
}

/// Revokes the token named `name`; its next request is refused. False when there is none.
pub fn revoke(store: &Store, name: &str) -> Result<bool, TokenError> {
    Ok(store.with(|c| {
        c.execute(
            "UPDATE tokens SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL",
            params![name, now()],
        )
    })? > 0)
}

/// The live token whose secret is `token`, or None (unknown or revoked).
pub async fn verify(store: &Arc<Store>, token: &str) -> Result<Option<TokenInfo>, StoreError> {
    if !token.starts_with(PREFIX) {
        return Ok(None);
    }
    let h = hash(token);
    store
        .run(move |c| {
            c.query_row(
                "SELECT name, scopes, created_at, revoked_at FROM tokens
                 WHERE hash = ?1 AND revoked_at IS NULL",
                [h],
                |r| {
                    Ok(TokenInfo {
                        name: r.get(0)?,
                        scopes: parse_scopes(&r.get::<_, String>(1)?),
                        created_at: r.get(2)?,
                        revoked_at: r.get(3)?,
                    })
                },
            )
            .optional()
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_token_verifies_until_revoked_and_only_its_hash_is_stored() {
        let store = Store::memory().unwrap();
        let scopes = BTreeSet::from([Scope::Read, Scope::Deploy]);
        let token = create(&store, "dashboard", &scopes).unwrap();
        assert!(token.starts_with(PREFIX) && token.len() == PREFIX.len() + 43);
        let stored: String = store
            .with(|c| c.query_row("SELECT hash FROM tokens", [], |r| r.get(0)))
            .unwrap();
        assert_ne!(stored, token);
        assert!(!stored.contains(&token[PREFIX.len()..]));
        let info = verify(&store, &token).await.unwrap().unwrap();
        assert_eq!((info.name.as_str(), &info.scopes), ("dashboard", &scopes));
        assert!(verify(&store, "m8c_wrong").await.unwrap().is_none());
        assert!(verify(&store, &token[1..]).await.unwrap().is_none());
        assert!(matches!(
            create(&store, "dashboard", &scopes),
            Err(TokenError::Invalid(_))
        ));
        assert!(revoke(&store, "dashboard").unwrap());
        assert!(!revoke(&store, "dashboard").unwrap(), "revoked once");
        assert!(verify(&store, &token).await.unwrap().is_none());
        assert!(list(&store).unwrap()[0].revoked_at.is_some());
    }

    #[test]
    fn refuses_bad_names_and_no_scopes() {
        let store = Store::memory().unwrap();
        let one = BTreeSet::from([Scope::Read]);
        for bad in ["", "has space", "new\nline", &"x".repeat(65)] {
            assert!(create(&store, bad, &one).is_err(), "{bad:?}");
        }
        assert!(create(&store, "ok", &BTreeSet::new()).is_err());
        assert!(Scope::parse("admin").is_err());
    }
}
