//! Invariant 1: a credential of tenant A never reaches tenant B's data.

use serde_json::json;

use crate::helpers::TestApp;

#[test]
fn two_tenants_with_the_same_table_each_see_only_their_own_rows() {
    let app = TestApp::spawn();
    let a = app.signup("Alpha");
    let b = app.signup("Beta");
    assert_ne!(a.id, b.id);

    for (t, who) in [(&a, "alpha"), (&b, "beta")] {
        app.query(
            &t.access_token,
            "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)",
        )
        .expect(200);
        app.query_with(
            &t.access_token,
            "INSERT INTO notes (body) VALUES (?)",
            json!([format!("{who}-secret")]),
        )
        .expect(200);
    }

    for (t, mine, theirs) in [
        (&a, "alpha-secret", "beta-secret"),
        (&b, "beta-secret", "alpha-secret"),
    ] {
        // Through /v1/db/query …
        let rows = app
            .query(&t.access_token, "SELECT body FROM notes")
            .expect(200);
        assert_eq!(rows["rows"], json!([[mine]]));
        assert!(!rows.to_string().contains(theirs));
        // … and through /v1/db/batch, in and out of a transaction.
        for transaction in [true, false] {
            let out = app
                .post(
                    "/v1/db/batch",
                    Some(&t.access_token),
                    json!({ "statements": [{ "sql": "SELECT body FROM notes" }, { "sql": "SELECT count(*) FROM notes" }], "transaction": transaction }),
                )
                .expect(200);
            assert_eq!(out["results"][0]["rows"], json!([[mine]]));
            assert_eq!(out["results"][1]["rows"], json!([[1]]));
        }
    }

    // Writes by one tenant never show up in the other.
    app.batch(&a.access_token, json!([{ "sql": "DELETE FROM notes" }]))
        .expect(200);
    let rows = app
        .query(&b.access_token, "SELECT body FROM notes")
        .expect(200);
    assert_eq!(rows["rows"], json!([["beta-secret"]]));
}

#[test]
fn a_request_cannot_choose_its_tenant_by_header_or_body() {
    let app = TestApp::spawn();
    let a = app.signup("Alpha");
    let b = app.signup("Beta");
    app.query(&b.access_token, "CREATE TABLE only_b (x)")
        .expect(200);

    // An extra tenant field in the body is refused, not obeyed.
    app.post(
        "/v1/db/query",
        Some(&a.access_token),
        json!({ "sql": "SELECT * FROM only_b", "tenant": b.id }),
    )
    .expect_error(400, "invalid_input");
    // A tenant header is ignored: the query runs in A's database, where only_b does not exist.
    let resp = app
        .client
        .post(format!("{}/v1/db/query", app.base))
        .bearer_auth(&a.access_token)
        .header("x-tenant-id", &b.id)
        .json(&json!({ "sql": "SELECT * FROM only_b" }))
        .send()
        .expect("send");
    assert_eq!(resp.status().as_u16(), 422);
    assert!(resp.text().unwrap_or_default().contains("no such table"));
}
