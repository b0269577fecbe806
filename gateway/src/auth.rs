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

/// One accepted signing key, pinned to its algorithm (no algorithm confusion: an
/// HS256 token is never checked against a public key, nor the reverse).
struct Key {
    /// The JWK `kid`, when the key came from a JWKS.
    kid: Option<String>,
    /// Its algorithm.
    alg: Algorithm,
    /// The key.
    key: DecodingKey,
    /// Validation for this key (algorithm, leeway, iss, aud, nbf).
    validation: Validation,
}

/// Where verification keys and claim rules come from.
#[derive(Debug, Default)]
pub struct KeySources<'a> {
    /// HS256 shared secret.
    pub secret: Option<&'a [u8]>,
    /// A public key in PEM (Ed25519 -> EdDSA, RSA -> RS256).
    pub public_pem: Option<&'a [u8]>,
    /// A JWKS document (`{"keys": [...]}`); keys are chosen by the token's `kid`.
    pub jwks: Option<&'a str>,
    /// Required `iss`, if any.
    pub issuer: Option<&'a str>,
    /// Required `aud`, if any.
    pub audience: Option<&'a str>,
    /// Accepted clock skew for `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
}

/// Verifies tokens. Built once at start-up and shared read-only by the shards.
pub struct Verifier {
    /// Accepted keys. Invariant: not empty.
    keys: Vec<Key>,
}

impl Verifier {
    /// A verifier for HS256 tokens signed with `secret`.
    pub fn hs256(secret: &[u8], leeway_secs: u64) -> Verifier {
        Verifier::new(&KeySources { secret: Some(secret), leeway_secs, ..Default::default() })
            .expect("a secret alone always makes a verifier")
    }

    /// A verifier for every configured key.
    pub fn new(src: &KeySources<'_>) -> anyhow::Result<Verifier> {
        let validation = |alg: Algorithm| {
            let mut v = Validation::new(alg);
            v.leeway = src.leeway_secs;
            v.validate_nbf = true;
            // A configured issuer or audience must also be present, not only match.
            let mut required = vec!["exp", "sub"];
            required.extend(src.issuer.map(|_| "iss"));
            required.extend(src.audience.map(|_| "aud"));
            v.set_required_spec_claims(&required);
            if let Some(iss) = src.issuer {
                v.set_issuer(&[iss]);
            }
            match src.audience {
                Some(aud) => v.set_audience(&[aud]),
                None => v.validate_aud = false,
            }
            v
        };
        let mut keys = Vec::new();
        if let Some(secret) = src.secret {
            let alg = Algorithm::HS256;
            keys.push(Key { kid: None, alg, key: DecodingKey::from_secret(secret), validation: validation(alg) });
        }
        if let Some(pem) = src.public_pem {
            let (alg, key) = if let Ok(k) = DecodingKey::from_ed_pem(pem) {
                (Algorithm::EdDSA, k)
            } else if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
                (Algorithm::RS256, k)
            } else {
                anyhow::bail!("jwt_public_key is neither an Ed25519 nor an RSA public key in PEM");
            };
            keys.push(Key { kid: None, alg, key, validation: validation(alg) });
        }
        if let Some(text) = src.jwks {
            let set: jsonwebtoken::jwk::JwkSet =
                serde_json::from_str(text).map_err(|e| anyhow::anyhow!("jwt_jwks: {e}"))?;
            for jwk in &set.keys {
                use jsonwebtoken::jwk::{AlgorithmParameters, KeyAlgorithm};
                let alg = match (&jwk.common.key_algorithm, &jwk.algorithm) {
                    (Some(KeyAlgorithm::EdDSA), _) | (None, AlgorithmParameters::OctetKeyPair(_)) => Algorithm::EdDSA,
                    (Some(KeyAlgorithm::RS256), _) | (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
                    (other, _) => anyhow::bail!("jwt_jwks: unsupported key algorithm {other:?} (use EdDSA or RS256)"),
                };
                let key = DecodingKey::from_jwk(jwk).map_err(|e| anyhow::anyhow!("jwt_jwks: {e}"))?;
                keys.push(Key { kid: jwk.common.key_id.clone(), alg, key, validation: validation(alg) });
            }
        }
        anyhow::ensure!(!keys.is_empty(), "no token verification key configured");
        Ok(Verifier { keys })
    }

    /// Checks a token and returns its claims, with `sub` validated as a user id.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let key = self
            .keys
            .iter()
            .find(|k| k.alg == header.alg && (header.kid.is_none() || k.kid.is_none() || k.kid == header.kid))
            .ok_or_else(|| {
                AuthError::Invalid(format!("no key for algorithm {:?} and kid {:?}", header.alg, header.kid))
            })?;
        let data = decode::<Claims>(token, &key.key, &key.validation).map_err(|e| match e.kind() {
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

    #[test]
    fn a_verifier_needs_a_usable_key() {
        assert!(Verifier::new(&KeySources::default()).is_err());
        let bad = KeySources { public_pem: Some(b"not a pem"), ..Default::default() };
        assert!(Verifier::new(&bad).is_err());
        let bad = KeySources { jwks: Some("{\"keys\": [{\"kty\": \"oct\", \"k\": \"AA\"}]}"), ..Default::default() };
        assert!(Verifier::new(&bad).is_err());
    }
}
