//! Roles: owner > admin > member > viewer, enforced by each route and again by the SQL
//! sandbox, and read fresh on every request.

use serde_json::json;

use crate::helpers::{Tenant, TestApp};

struct Team {
    owner: Tenant,
    admin: Tenant,
    member: Tenant,
    viewer: Tenant,
}

fn team(app: &TestApp) -> Team {
    let owner = app.signup("Team");
    app.query(&owner.access_token, "CREATE TABLE t (x)")
        .expect(200);
    for who in ["owner", "admin", "member", "viewer"] {
        app.query(
            &owner.access_token,
            &format!("CREATE TABLE drop_me_{who} (x)"),
        )
        .expect(200);
    }
    Team {
        admin: app.add_member(&owner, "admin"),
        member: app.add_member(&owner, "member"),
        viewer: app.add_member(&owner, "viewer"),
        owner,
    }
}

#[test]
fn each_role_gets_exactly_its_rights_on_every_route() {
    let app = TestApp::spawn();
    let team = team(&app);
    let people = [
        ("owner", &team.owner),
        ("admin", &team.admin),
        ("member", &team.member),
        ("viewer", &team.viewer),
    ];

    // (what, expected status for owner, admin, member, viewer)
    for (who, person) in people {
        let t = person.access_token.as_str();
        let expect = |what: &str, status: u16, got: u16| assert_eq!(got, status, "{who}: {what}");
        let writes = who != "viewer";
        let schema = who == "owner" || who == "admin";
        let manages = schema;

        expect("select", 200, app.query(t, "SELECT * FROM t").status);
        expect(
            "pragma_table_info",
            200,
            app.query(t, "SELECT * FROM pragma_table_info('t')").status,
        );
        expect(
            "insert",
            if writes { 200 } else { 403 },
            app.query(t, "INSERT INTO t VALUES (1)").status,
        );
        expect(
            "update",
            if writes { 200 } else { 403 },
            app.query(t, "UPDATE t SET x = 2").status,
        );
        expect(
            "delete",
            if writes { 200 } else { 403 },
            app.query(t, "DELETE FROM t WHERE x = 3").status,
        );
        expect(
            "batch insert",
            if writes { 200 } else { 403 },
            app.batch(t, json!([{ "sql": "INSERT INTO t VALUES (4)" }]))
                .status,
        );
        let table = format!("made_by_{who}");
        expect(
            "create table",
            if schema { 200 } else { 403 },
            app.query(t, &format!("CREATE TABLE {table} (x)")).status,
        );
        expect(
            "create index",
            if schema { 200 } else { 403 },
            app.query(t, &format!("CREATE INDEX i_{who} ON t (x)"))
                .status,
        );
        expect(
            "drop table",
            if schema { 200 } else { 403 },
            app.query(t, &format!("DROP TABLE drop_me_{who}")).status,
        );
        // TEMP objects are refused for every role (issue 17: they outlived their request on
        // the shared writer); see sandbox::temp_objects_are_refused_…
        expect(
            "temp table",
            403,
            app.query(t, &format!("CREATE TEMP TABLE tmp_{who} (x)"))
                .status,
        );
        if !writes {
            app.query(t, "INSERT INTO t VALUES (1)")
                .expect_error(403, "sql_forbidden");
        }
        if !schema {
            app.query(t, "CREATE TABLE nope (x)")
                .expect_error(403, "sql_forbidden");
        }

        expect("me", 200, app.get("/v1/me", Some(t)).status);
        expect("members", 200, app.get("/v1/members", Some(t)).status);
        expect(
            "invite a viewer",
            if manages { 201 } else { 403 },
            app.post(
                "/v1/invites",
                Some(t),
                json!({ "email": format!("new-{who}@example.com"), "role": "viewer" }),
            )
            .status,
        );
        expect(
            "invite an owner",
            if who == "owner" { 201 } else { 403 },
            app.post(
                "/v1/invites",
                Some(t),
                json!({ "email": format!("owner-{who}@example.com"), "role": "owner" }),
            )
            .status,
        );
        expect(
            "key db:read",
            201,
            app.post(
                "/v1/api-keys",
                Some(t),
                json!({ "name": "k", "scopes": ["db:read"] }),
            )
            .status,
        );
        expect(
            "key db:write",
            if writes { 201 } else { 403 },
            app.post(
                "/v1/api-keys",
                Some(t),
                json!({ "name": "k", "scopes": ["db:write"] }),
            )
            .status,
        );
        for scope in ["db:admin", "export", "audit:read"] {
            expect(
                scope,
                if schema { 201 } else { 403 },
                app.post(
                    "/v1/api-keys",
                    Some(t),
                    json!({ "name": "k", "scopes": [scope] }),
                )
                .status,
            );
        }
        expect("list keys", 200, app.get("/v1/api-keys", Some(t)).status);
    }

    // Member management: a scratch member per manager, so each attempt has a target.
    for (who, person) in people {
        let target = app.add_member(&team.owner, "viewer");
        let t = Some(person.access_token.as_str());
        let path = format!("/v1/members/{}", target.user_id);
        let manages = who == "owner" || who == "admin";
        let patch = app.request(
            reqwest::Method::PATCH,
            &path,
            t,
            Some(&json!({ "role": "member" })),
        );
        assert_eq!(
            patch.status,
            if manages { 200 } else { 403 },
            "{who}: patch {}",
            patch.body
        );
        let promote = app.request(
            reqwest::Method::PATCH,
            &path,
            t,
            Some(&json!({ "role": "owner" })),
        );
        assert_eq!(
            promote.status,
            if who == "owner" { 200 } else { 403 },
            "{who}: make owner {}",
            promote.body
        );
        if who == "owner" {
            // Two owners now: demote the new one again so it can be removed below.
            app.request(
                reqwest::Method::PATCH,
                &path,
                t,
                Some(&json!({ "role": "viewer" })),
            )
            .expect(200);
        }
        let delete = app.request(reqwest::Method::DELETE, &path, t, None);
        assert_eq!(
            delete.status,
            if manages { 204 } else { 403 },
            "{who}: delete {}",
            delete.body
        );
    }
}

#[test]
fn a_demotion_takes_effect_on_the_next_request_not_at_token_expiry() {
    let app = TestApp::spawn();
    let team = team(&app);
    app.query(&team.admin.access_token, "CREATE TABLE by_admin (x)")
        .expect(200);
    app.request(
        reqwest::Method::PATCH,
        &format!("/v1/members/{}", team.admin.user_id),
        Some(&team.owner.access_token),
        Some(&json!({ "role": "viewer" })),
    )
    .expect(200);
    // Same access token, which still says "admin" inside: the catalog decides.
    app.query(&team.admin.access_token, "CREATE TABLE again (x)")
        .expect_error(403, "sql_forbidden");
    app.query(&team.admin.access_token, "INSERT INTO by_admin VALUES (1)")
        .expect_error(403, "sql_forbidden");
    app.query(&team.admin.access_token, "SELECT * FROM by_admin")
        .expect(200);
    app.post(
        "/v1/invites",
        Some(&team.admin.access_token),
        json!({ "email": "x@example.com", "role": "viewer" }),
    )
    .expect_error(403, "forbidden");

    // A removed member is out at once.
    app.request(
        reqwest::Method::DELETE,
        &format!("/v1/members/{}", team.member.user_id),
        Some(&team.owner.access_token),
        None,
    )
    .expect(204);
    app.query(&team.member.access_token, "SELECT 1")
        .expect_error(401, "unauthenticated");
    app.post(
        "/v1/auth/refresh",
        None,
        json!({ "refresh_token": team.member.refresh_token }),
    )
    .expect_error(401, "unauthenticated");
}

#[test]
fn the_last_owner_cannot_be_removed_or_demoted() {
    let app = TestApp::spawn();
    let team = team(&app);
    let owner_path = format!("/v1/members/{}", team.owner.user_id);
    let t = Some(team.owner.access_token.as_str());
    app.request(
        reqwest::Method::PATCH,
        &owner_path,
        t,
        Some(&json!({ "role": "admin" })),
    )
    .expect_error(409, "conflict");
    app.request(reqwest::Method::DELETE, &owner_path, t, None)
        .expect_error(409, "conflict");
    // An admin may not touch an owner at all.
    app.request(
        reqwest::Method::PATCH,
        &owner_path,
        Some(&team.admin.access_token),
        Some(&json!({ "role": "viewer" })),
    )
    .expect_error(403, "forbidden");
    // With a second owner, the first may step down.
    app.request(
        reqwest::Method::PATCH,
        &format!("/v1/members/{}", team.admin.user_id),
        t,
        Some(&json!({ "role": "owner" })),
    )
    .expect(200);
    app.request(
        reqwest::Method::PATCH,
        &owner_path,
        t,
        Some(&json!({ "role": "admin" })),
    )
    .expect(200);
    let members = app
        .get("/v1/members", Some(&team.admin.access_token))
        .expect(200);
    let owners = members["members"].as_array().map_or(0, |m| {
        m.iter().filter(|x| x["role"] == json!("owner")).count()
    });
    assert_eq!(owners, 1);
}

#[test]
fn invitations_are_single_use_and_an_existing_account_must_prove_itself() {
    let app = TestApp::spawn();
    let a = app.signup("Alpha");
    let b = app.signup("Beta");
    let invite = app
        .post(
            "/v1/invites",
            Some(&a.access_token),
            json!({ "email": "new@example.com", "role": "member" }),
        )
        .expect(201);
    let accept = json!({ "invite_token": invite["invite_token"], "password": "long enough" });
    app.post("/v1/invites/accept", None, accept.clone())
        .expect(201);
    app.post("/v1/invites/accept", None, accept)
        .expect_error(404, "not_found");
    app.post(
        "/v1/invites",
        Some(&a.access_token),
        json!({ "email": "new@example.com", "role": "member" }),
    )
    .expect_error(409, "conflict");

    // B's owner is invited into A: needs B's own password, then can sign in to either.
    let invite = app
        .post(
            "/v1/invites",
            Some(&a.access_token),
            json!({ "email": b.email, "role": "viewer" }),
        )
        .expect(201);
    app.post(
        "/v1/invites/accept",
        None,
        json!({ "invite_token": invite["invite_token"], "password": "wrong password" }),
    )
    .expect_error(401, "invalid_credentials");
    let joined = app
        .post(
            "/v1/invites/accept",
            None,
            json!({ "invite_token": invite["invite_token"], "password": b.password }),
        )
        .expect(201);
    let me = app
        .get("/v1/me", joined["access_token"].as_str())
        .expect(200);
    assert_eq!(
        (me["tenant"]["id"].as_str(), me["role"].as_str()),
        (Some(a.id.as_str()), Some("viewer"))
    );
    let into_a = app
        .post(
            "/v1/auth/login",
            None,
            json!({ "email": b.email, "password": b.password, "tenant": a.id }),
        )
        .expect(200);
    app.query(
        into_a["access_token"].as_str().expect("access token"),
        "CREATE TABLE x (y)",
    )
    .expect_error(403, "sql_forbidden");
    let default = app
        .post(
            "/v1/auth/login",
            None,
            json!({ "email": b.email, "password": b.password }),
        )
        .expect(200);
    let me = app
        .get("/v1/me", default["access_token"].as_str())
        .expect(200);
    assert_eq!(me["tenant"]["id"].as_str(), Some(b.id.as_str()));
}
