//! Access tokens that are not exactly what silo issued answer 401.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use silo_crypto::{Keyring, MasterKey};

use crate::helpers::TestApp;

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("JWT payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url"))
        .expect("JSON claims")
}

/// Signs `claims` with the server's real signing key (derived from the master key the
/// test gave it), so only the claims differ from a genuine token.
fn sign_with_server_key(app: &TestApp, claims: &Value) -> String {
    let ring = Keyring::new(
        MasterKey::from_base64(&app.master_key).expect("key"),
        vec![],
    );
    let secret = ring
        .derive_key(ring.primary_id(), "jwt-signing/hs256")
        .expect("derive");
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(format!("k-{}", ring.primary_id()));
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_secret(secret.expose_secret()),
    )
    .expect("sign")
}

#[test]
fn tampered_forged_and_expired_access_tokens_answer_401() {
    let app = TestApp::spawn();
    let a = app.signup("Alpha");
    let b = app.signup("Beta");
    app.query(&a.access_token, "CREATE TABLE t (x)").expect(200);
    let genuine = claims_of(&a.access_token);
    let parts: Vec<&str> = a.access_token.split('.').collect();

    // Properly signed, but the tenant claim names B (where A's user is no member).
    let mut other_tid = genuine.clone();
    other_tid["tid"] = json!(b.id);
    let resigned_other_tid = sign_with_server_key(&app, &other_tid);

    // Payload edited to name B, original signature kept.
    let edited_payload = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(other_tid.to_string()),
        parts[2]
    );

    // alg: none, no signature.
    let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let alg_none = format!("{none_header}.{}.", parts[1]);

    // Signed with a key that is not the server's, under the server's kid.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = jsonwebtoken::decode_header(&a.access_token)
        .expect("header")
        .kid;
    let wrong_key = jsonwebtoken::encode(&header, &genuine, &EncodingKey::from_secret(&[7u8; 32]))
        .expect("sign");

    // Properly signed but expired an hour ago (well past the leeway).
    let mut expired = genuine.clone();
    let now = genuine["iat"].as_i64().expect("iat");
    expired["iat"] = json!(now - 7200);
    expired["nbf"] = json!(now - 7200);
    expired["exp"] = json!(now - 3600);
    let expired = sign_with_server_key(&app, &expired);

    // Properly signed but not valid until an hour from now.
    let mut future = genuine.clone();
    future["nbf"] = json!(now + 3600);
    let not_yet = sign_with_server_key(&app, &future);

    // Signed with the server's key, but naming a key id the server does not have.
    let ring = Keyring::new(
        MasterKey::from_base64(&app.master_key).expect("key"),
        vec![],
    );
    let secret = ring
        .derive_key(ring.primary_id(), "jwt-signing/hs256")
        .expect("derive");
    let mut unknown_kid_header = Header::new(Algorithm::HS256);
    unknown_kid_header.kid = Some("k-00000000".to_owned());
    let unknown_kid = jsonwebtoken::encode(
        &unknown_kid_header,
        &genuine,
        &EncodingKey::from_secret(secret.expose_secret()),
    )
    .expect("sign");

    // Properly signed, but without an expiry, or without the tenant claim.
    let mut no_exp = genuine.clone();
    no_exp.as_object_mut().expect("claims").remove("exp");
    let no_exp = sign_with_server_key(&app, &no_exp);
    let mut no_tid = genuine.clone();
    no_tid.as_object_mut().expect("claims").remove("tid");
    let no_tid = sign_with_server_key(&app, &no_tid);

    // The refresh token is not an access token.
    let refresh_as_access = a.refresh_token.clone();

    for (what, token) in [
        ("other tid, re-signed", resigned_other_tid),
        ("edited payload", edited_payload),
        ("alg none", alg_none),
        ("wrong key", wrong_key),
        ("expired", expired),
        ("not yet valid", not_yet),
        ("unknown kid", unknown_kid),
        ("no exp", no_exp),
        ("no tid", no_tid),
        ("refresh token", refresh_as_access),
        ("garbage", "not.a.jwt".to_owned()),
    ] {
        let resp = app.query(&token, "SELECT * FROM t");
        assert_eq!(resp.status, 401, "{what}: {}", resp.body);
        assert_eq!(resp.error_code(), "unauthenticated", "{what}");
    }

    // A correctly re-signed genuine token still works: the checks above failed for the
    // reason tested, not because re-signing itself is broken.
    app.query(&sign_with_server_key(&app, &genuine), "SELECT * FROM t")
        .expect(200);
    // No credential at all.
    app.post("/v1/db/query", None, json!({ "sql": "SELECT 1" }))
        .expect_error(401, "unauthenticated");
}

#[test]
fn access_tokens_carry_what_sessions_need() {
    let app = TestApp::spawn();
    let a = app.signup("Alpha");
    let header = jsonwebtoken::decode_header(&a.access_token).expect("header");
    assert_eq!(header.alg, Algorithm::HS256);
    assert!(header.kid.is_some_and(|k| !k.is_empty()));
    let c = claims_of(&a.access_token);
    assert_eq!(c["sub"], json!(a.user_id));
    assert_eq!(c["tid"], json!(a.id));
    assert_eq!(c["role"], json!("owner"));
    for field in ["sid", "sv", "jti", "iat", "nbf", "exp"] {
        assert!(!c[field].is_null(), "claim {field} missing: {c}");
    }
    assert_eq!(
        c["exp"].as_i64().unwrap_or(0) - c["iat"].as_i64().unwrap_or(0),
        900
    );
}
