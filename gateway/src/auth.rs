//! Token verification on upgrade, and minting for development.
//!
//! A token is a JWT signed with HS256. `sub` is the user id; the device id comes from
//! the `device` claim, else the `?device=` query parameter, else `"default"`.

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The claims Switchboard reads.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Expiry, seconds since the epoch (required).
    pub exp: u64,
    /// Issued at.
    #[serde(default)]
    pub iat: u64,
    /// Device id bound into the token, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// Why a token was refused (HTTP 401 body says which).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No token in `Authorization: Bearer` nor `?token=`.
    #[error("missing token: send Authorization: Bearer <jwt> or ?token=<jwt>")]
    Missing,
    /// Past `exp` (plus leeway).
    #[error("token expired")]
    Expired,
    /// Bad signature, bad structure, wrong algorithm, or invalid claims.
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Verifies tokens; built once per shard from the config.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    /// A verifier for HS256 tokens signed with `secret`.
    pub fn hs256(secret: &[u8], leeway_secs: u64) -> Verifier {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = leeway_secs;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Verifier { key: DecodingKey::from_secret(secret), validation }
    }

    /// Checks a token and returns its claims, with `sub` validated as a user id.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let data = decode::<Claims>(token, &self.key, &self.validation).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid(e.to_string()),
        })?;
        wire::frame::check::user_id("sub", &data.claims.sub).map_err(|e| AuthError::Invalid(e.to_string()))?;
        if let Some(d) = &data.claims.device {
            wire::frame::check::user_id("device", d).map_err(|e| AuthError::Invalid(e.to_string()))?;
        }
        Ok(data.claims)
    }
}

/// Mints an HS256 token for `user` valid for `ttl`.
pub fn mint(secret: &[u8], user: &str, device: Option<&str>, ttl: std::time::Duration) -> anyhow::Result<String> {
    wire::frame::check::user_id("user", user)?;
    let now = shard::ids::now_ms() / 1000;
    let claims = Claims { sub: user.to_owned(), exp: now + ttl.as_secs(), iat: now, device: device.map(str::to_owned) };
    Ok(encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_then_verify_and_refuse_others() {
        let secret = b"0123456789abcdef0123";
        let v = Verifier::hs256(secret, 0);
        let t = mint(secret, "alice", Some("phone"), std::time::Duration::from_secs(60)).unwrap();
        let c = v.verify(&t).unwrap();
        assert_eq!((c.sub.as_str(), c.device.as_deref()), ("alice", Some("phone")));
        let other = mint(b"another-secret-0123456", "alice", None, std::time::Duration::from_secs(60)).unwrap();
        assert!(matches!(v.verify(&other), Err(AuthError::Invalid(_))));
        assert!(matches!(v.verify("a.b.c"), Err(AuthError::Invalid(_))));
    }
}
