//! Bearer tokens: 32 random bytes shown once, kept only as a SHA-256 hash, compared in constant time.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of every token, so a leaked token is recognisable by secret scanners.
pub const TOKEN_PREFIX: &str = "m8tb_";

/// Why no token could be made: the kernel refused randomness.
#[derive(Debug, thiserror::Error)]
#[error("cannot read random bytes from the operating system: {0}")]
pub struct RandomError(String);

/// A freshly minted bearer token. The only copy of the secret: it is never stored and its
/// `Debug` output is redacted, so it leaves the broker only in the mint response.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Mints a token from 32 bytes of OS randomness.
    pub fn generate() -> Result<Self, RandomError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| RandomError(e.to_string()))?;
        Ok(Self(format!(
            "{TOKEN_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(bytes)
        )))
    }

    /// Wraps a token string read back from a token file or a mint response.
    pub fn from_secret(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself, for writing the token file; never log it.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// The hash the broker keeps instead of the token.
    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.0)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// SHA-256 of a token: what the registry stores and compares.
#[derive(Clone, Copy)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// Hashes a presented token (the `Authorization` header value).
    pub fn of(presented: &str) -> Self {
        let digest = Sha256::digest(presented.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_slice());
        Self(out)
    }

    /// Constant-time equality, so response timing does not reveal how much of a hash matched.
    pub fn ct_eq(&self, other: &TokenHash) -> bool {
        bool::from(self.0.ct_eq(&other.0))
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(<redacted>)")
    }
}

/// A public, non-secret identifier for a token (for listing, revoking and audit lines).
pub fn new_token_id() -> Result<String, RandomError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| RandomError(e.to_string()))?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_prefixed_and_long() {
        let a = Token::generate().unwrap();
        let b = Token::generate().unwrap();
        assert_ne!(a, b);
        assert!(a.expose_secret().starts_with(TOKEN_PREFIX));
        // 32 bytes in unpadded base64url are 43 characters.
        assert_eq!(a.expose_secret().len(), TOKEN_PREFIX.len() + 43);
        assert!(a
            .expose_secret()
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-'));
    }

    #[test]
    fn hash_matches_only_the_same_token() {
        let a = Token::generate().unwrap();
        let b = Token::generate().unwrap();
        assert!(a.hash().ct_eq(&TokenHash::of(a.expose_secret())));
        assert!(!a.hash().ct_eq(&b.hash()));
        assert!(!a.hash().ct_eq(&TokenHash::of("")));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let a = Token::generate().unwrap();
        let shown = format!("{a:?} {:?}", a.hash());
        assert!(!shown.contains(&a.expose_secret()[TOKEN_PREFIX.len()..]));
        assert!(shown.contains("redacted"));
    }
}
