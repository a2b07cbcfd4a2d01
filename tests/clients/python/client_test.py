"""The pure-Python libSQL client (`libsql-client` from PyPI) against a running silo: over
HTTP for an http:// URL (Hrana over HTTP v1: /v1/execute, /v1/batch) and over WebSocket for
a ws:// one (Hrana over WebSocket, with interactive transactions).

Usage: python client_test.py <url> <owner token> <viewer token> <other tenant's token>
Exits non-zero with a message on the first failed check.
"""

import sys

import aiohttp
import libsql_client

url, owner_token, viewer_token, other_token = sys.argv[1:5]
over_ws = url.startswith("ws")


def rejects(fn, needle, what):
    try:
        fn()
    except libsql_client.LibsqlError as e:
        text = f"{e} {getattr(e, 'code', '')}"
        assert needle.lower() in text.lower(), f"{what}: {text!r} lacks {needle!r}"
        return
    raise AssertionError(f"{what}: expected an error")


with libsql_client.create_client_sync(url, auth_token=owner_token) as db:
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, i INTEGER, r REAL, s TEXT, b BLOB, n)")

    # Positional and named arguments, every value type.
    rs = db.execute(
        "INSERT INTO t(i, r, s, b, n) VALUES (?, ?, ?, ?, ?)",
        [2**62, 1.5, "héllo ✓", b"\x00\x01\xff", None],
    )
    assert rs.rows_affected == 1 and rs.last_insert_rowid == 1, rs
    db.execute("INSERT INTO t(i, s) VALUES (:i, :s)", {"i": -7, "s": "named"})
    rs = db.execute("SELECT i, r, s, b, n FROM t ORDER BY id")
    assert rs.columns == ("i", "r", "s", "b", "n"), rs.columns
    assert tuple(rs.rows[0]) == (2**62, 1.5, "héllo ✓", b"\x00\x01\xff", None), tuple(rs.rows[0])
    assert tuple(rs.rows[1])[0] == -7

    # A batch is one transaction: a failing statement undoes the others.
    db.batch(["INSERT INTO t(i) VALUES (100)", "INSERT INTO t(i) VALUES (101)"])
    rejects(
        lambda: db.batch(["INSERT INTO t(i) VALUES (102)", "INSERT INTO t(id) VALUES (1)"]),
        "UNIQUE",
        "failing batch",
    )
    rs = db.execute("SELECT count(*) FROM t WHERE i IN (100, 101, 102)")
    assert rs.rows[0][0] == 2, tuple(rs.rows[0])

    if over_ws:
        # Interactive transactions: the client supports them over WebSocket only.
        tx = db.transaction()
        tx.execute("INSERT INTO t(i) VALUES (200)")
        assert tx.execute("SELECT count(*) FROM t WHERE i = 200").rows[0][0] == 1
        tx.commit()
        tx = db.transaction()
        tx.execute("DELETE FROM t WHERE i = 200")
        tx.rollback()
        assert db.execute("SELECT count(*) FROM t WHERE i = 200").rows[0][0] == 1
    else:
        db.execute("INSERT INTO t(i) VALUES (200)")

    # Errors: SQL and the sandbox.
    rejects(lambda: db.execute("SELECT * FROM no_such_table"), "no such table", "sql error")
    rejects(lambda: db.execute("ATTACH DATABASE '/tmp/x.db' AS x"), "not allowed", "sandbox")

# A viewer reads and cannot write; another tenant sees none of it.
with libsql_client.create_client_sync(url, auth_token=viewer_token) as viewer:
    assert viewer.execute("SELECT count(*) FROM t").rows[0][0] == 5
    rejects(lambda: viewer.execute("DELETE FROM t"), "SQLITE_AUTH", "viewer write")
with libsql_client.create_client_sync(url, auth_token=other_token) as other:
    rejects(lambda: other.execute("SELECT * FROM t"), "no such table", "other tenant")

# A wrong credential is refused. Over WebSocket the server answers `hello_error` and closes
# the socket at once (as the spec asks); the client, which sent its request without waiting,
# reports either that error or the closed socket.
with libsql_client.create_client_sync(url, auth_token="silo_nope_nope") as stranger:
    if over_ws:
        try:
            stranger.execute("SELECT 1")
        except (libsql_client.LibsqlError, aiohttp.ClientError):
            pass
        else:
            raise AssertionError("wrong credential: expected an error")
    else:
        rejects(lambda: stranger.execute("SELECT 1"), "unauthenticated", "wrong credential")

print(f"python client over {url.split(':')[0]}: ok")
