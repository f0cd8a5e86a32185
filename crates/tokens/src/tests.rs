use std::time::{SystemTime, UNIX_EPOCH};

use super::*;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn settings() -> VerifierSettings {
    VerifierSettings {
        issuer: "storemesh".into(),
        audience: "storemesh".into(),
        leeway_secs: 5,
    }
}

fn claims(exp_offset: i64) -> Claims {
    let now = now();
    Claims {
        iss: "storemesh".into(),
        aud: "storemesh".into(),
        sub: "user-1".into(),
        role: Role::Seller,
        scope: String::new(),
        iat: now,
        exp: now.saturating_add_signed(exp_offset),
        jti: "jti-1".into(),
    }
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_seed(&[seed; 32]).unwrap()
}

fn b64(json: &str) -> String {
    URL_SAFE_NO_PAD.encode(json)
}

#[test]
fn signed_tokens_verify_into_an_identity() {
    let signer = key(1);
    let mut claims = claims(600);
    claims.role = Role::Service;
    claims.scope = "storage.write:thumbnails catalog.write:variants".into();
    let token = signer.sign(&claims).unwrap();
    let verifier = Verifier::new(settings(), &[signer.public().clone()]).unwrap();
    let identity = verifier.verify(&token).unwrap();
    assert_eq!(identity.subject, "user-1");
    assert!(identity.is_service());
    assert!(identity.has_scope("catalog.write:variants"));
    assert!(!identity.has_scope("storage.read"));
    assert_eq!(identity.token_id, "jti-1");
}

#[test]
fn expiry_is_enforced_with_leeway() {
    let signer = key(1);
    let verifier = Verifier::new(settings(), &[signer.public().clone()]).unwrap();
    let within_leeway = signer.sign(&claims(-2)).unwrap();
    assert!(verifier.verify(&within_leeway).is_ok());
    let expired = signer.sign(&claims(-60)).unwrap();
    assert_eq!(verifier.verify(&expired), Err(TokenError::Expired));
}

#[test]
fn wrong_issuer_and_audience_are_refused() {
    let signer = key(1);
    let verifier = Verifier::new(settings(), &[signer.public().clone()]).unwrap();
    let mut wrong_issuer = claims(600);
    wrong_issuer.iss = "someone-else".into();
    assert_eq!(
        verifier.verify(&signer.sign(&wrong_issuer).unwrap()),
        Err(TokenError::WrongIssuer)
    );
    let mut wrong_audience = claims(600);
    wrong_audience.aud = "another-mesh".into();
    assert_eq!(
        verifier.verify(&signer.sign(&wrong_audience).unwrap()),
        Err(TokenError::WrongAudience)
    );
}

#[test]
fn tampered_payload_fails_the_signature() {
    let signer = key(1);
    let verifier = Verifier::new(settings(), &[signer.public().clone()]).unwrap();
    let token = signer.sign(&claims(600)).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let mut forged_claims = claims(600);
    forged_claims.role = Role::Admin;
    let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged_claims).unwrap());
    let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    assert_eq!(verifier.verify(&forged), Err(TokenError::BadSignature));
}

#[test]
fn a_key_nobody_published_is_unknown_and_a_reused_kid_fails_the_signature() {
    let trusted = key(1);
    let attacker = key(2);
    let verifier = Verifier::new(settings(), &[trusted.public().clone()]).unwrap();
    let token = attacker.sign(&claims(600)).unwrap();
    assert!(matches!(
        verifier.verify(&token),
        Err(TokenError::UnknownKey { .. })
    ));

    // The attacker's key, but claiming the trusted key's id.
    let header = b64(&format!(
        r#"{{"alg":"EdDSA","typ":"JWT","kid":"{}"}}"#,
        trusted.kid()
    ));
    let genuine = attacker.sign(&claims(600)).unwrap();
    let parts: Vec<&str> = genuine.split('.').collect();
    let forged = format!("{header}.{}.{}", parts[1], parts[2]);
    assert_eq!(verifier.verify(&forged), Err(TokenError::BadSignature));
}

#[test]
fn alg_none_and_other_algorithms_are_refused() {
    let signer = key(1);
    let verifier = Verifier::new(settings(), &[signer.public().clone()]).unwrap();
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(600)).unwrap());
    let none = format!(
        "{}.{payload}.",
        b64(&format!(r#"{{"alg":"none","kid":"{}"}}"#, signer.kid()))
    );
    assert_eq!(verifier.verify(&none), Err(TokenError::WrongAlgorithm));
    let hs256 = format!(
        "{}.{payload}.c2lnbmF0dXJl",
        b64(&format!(r#"{{"alg":"HS256","kid":"{}"}}"#, signer.kid()))
    );
    assert_eq!(verifier.verify(&hs256), Err(TokenError::WrongAlgorithm));
}

#[test]
fn garbage_is_malformed() {
    let verifier = Verifier::new(settings(), &[key(1).public().clone()]).unwrap();
    for token in ["", "abc", "a.b.c", "....", "eyJhbGciOiJFZERTQSJ9"] {
        assert!(verifier.verify(token).is_err(), "{token}");
    }
}

#[test]
fn missing_kid_is_refused() {
    let signer = key(1);
    let verifier = Verifier::new(settings(), &[signer.public().clone()]).unwrap();
    let token = signer.sign(&claims(600)).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let no_kid = format!("{}.{}.{}", b64(r#"{"alg":"EdDSA"}"#), parts[1], parts[2]);
    assert_eq!(verifier.verify(&no_kid), Err(TokenError::MissingKeyId));
}

#[test]
fn jwks_round_trips_and_ignores_other_key_types() {
    let keys = [key(1).public().clone(), key(2).public().clone()];
    let json = jwks_json(&keys);
    assert_eq!(parse_jwks(&json).unwrap(), keys);

    let mixed = r#"{"keys":[{"kty":"RSA","kid":"r","n":"x","e":"AQAB","crv":"","x":""},
        {"kty":"OKP","crv":"Ed25519","kid":"k","x":"AAAA"}]}"#;
    let parsed = parse_jwks(mixed).unwrap();
    assert_eq!(parsed.len(), 1);
    assert_eq!(parsed[0].kid, "k");
    assert!(parse_jwks("not json").is_err());
}

#[test]
fn key_ids_are_stable() {
    assert_eq!(key(7).kid(), key(7).kid());
    assert_ne!(key(7).kid(), key(8).kid());
    assert_eq!(key(7).kid().len(), 16);
}
