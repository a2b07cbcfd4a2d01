// The TypeScript libSQL client (@libsql/client) against a running silo, over HTTP for an
// http:// URL and over WebSocket (Hrana over WebSocket) for a ws:// one.
// Usage: node client_test.mjs <url> <owner token> <viewer token> <other tenant's token>
//        [<owner's session token> <key id>: revoke the owner token, an API key, at the end]
// Exits non-zero with a message on the first failed check.
import assert from "node:assert/strict";

const [url] = process.argv.slice(2);
const { createClient } = await import(
  url.startsWith("ws") ? "@libsql/client/ws" : "@libsql/client/http"
);

const [, ownerToken, viewerToken, otherToken, sessionToken, keyId] = process.argv.slice(2);
const db = createClient({ url, authToken: ownerToken, intMode: "bigint" });
const viewer = createClient({ url, authToken: viewerToken });
const other = createClient({ url, authToken: otherToken });

async function rejects(promise, pattern, what) {
  try {
    await promise;
  } catch (e) {
    assert.match(`${e.message} ${e.code ?? ""}`, pattern, what);
    return e;
  }
  assert.fail(`${what}: expected an error`);
}

await db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, i INTEGER, r REAL, s TEXT, b BLOB, n)");

// Positional and named arguments, every value type.
const ins = await db.execute({
  sql: "INSERT INTO t(i, r, s, b, n) VALUES (?, ?, ?, ?, ?)",
  args: [9007199254740993n, 1.5, "héllo ✓", new Uint8Array([0, 1, 255]), null],
});
assert.equal(ins.rowsAffected, 1);
assert.equal(ins.lastInsertRowid, 1n);
await db.execute({ sql: "INSERT INTO t(i, s) VALUES (:i, :s)", args: { i: -7, s: "named" } });
const rows = await db.execute("SELECT i, r, s, b, n FROM t ORDER BY id");
assert.deepEqual(rows.columns, ["i", "r", "s", "b", "n"]);
assert.deepEqual(rows.columnTypes, ["INTEGER", "REAL", "TEXT", "BLOB", ""]);
assert.equal(rows.rows[0].i, 9007199254740993n);
assert.equal(rows.rows[0].r, 1.5);
assert.equal(rows.rows[0].s, "héllo ✓");
assert.deepEqual(new Uint8Array(rows.rows[0].b), new Uint8Array([0, 1, 255]));
assert.equal(rows.rows[0].n, null);
assert.equal(rows.rows[1].i, -7n);

// A batch is one transaction: a failing statement undoes the others.
await db.batch(["INSERT INTO t(i) VALUES (100)", "INSERT INTO t(i) VALUES (101)"], "write");
await rejects(
  db.batch(["INSERT INTO t(i) VALUES (102)", "INSERT INTO t(id) VALUES (1)"], "write"),
  /UNIQUE|CONSTRAINT/,
  "failing batch",
);
const afterBatch = await db.execute("SELECT count(*) AS n FROM t WHERE i IN (100, 101, 102)");
assert.equal(afterBatch.rows[0].n, 2n);

// Interactive transactions across requests: one commits, one rolls back.
const tx = await db.transaction("write");
await tx.execute("INSERT INTO t(i) VALUES (200)");
const inside = await tx.execute("SELECT count(*) AS n FROM t WHERE i = 200");
assert.equal(inside.rows[0].n, 1n);
await tx.commit();
const tx2 = await db.transaction("write");
await tx2.execute("DELETE FROM t WHERE i = 200");
await tx2.rollback();
const kept = await db.execute("SELECT count(*) AS n FROM t WHERE i = 200");
assert.equal(kept.rows[0].n, 1n);

// A read transaction ("BEGIN TRANSACTION READONLY" on the wire) sees a snapshot.
const rtx = await db.transaction("read");
const snap = await rtx.execute("SELECT count(*) AS n FROM t");
assert.equal(snap.rows[0].n, 5n);
await rtx.commit();

// Errors: SQL and the sandbox.
await rejects(db.execute("SELECT * FROM no_such_table"), /no such table/, "sql error");
await rejects(db.execute("ATTACH DATABASE '/tmp/x.db' AS x"), /not allowed|SQLITE_AUTH/, "sandbox");

// A viewer reads and cannot write; another tenant sees none of it.
const seen = await viewer.execute("SELECT count(*) AS n FROM t");
assert.equal(seen.rows[0].n, 5);
await rejects(viewer.execute("DELETE FROM t"), /not change it|SQLITE_AUTH/, "viewer write");
await rejects(other.execute("SELECT * FROM t"), /no such table/, "other tenant");

// Several statements in one call (a `sequence` request over WebSocket).
await db.executeMultiple("CREATE TABLE m(x); INSERT INTO m VALUES (1); INSERT INTO m VALUES (2);");
assert.equal((await db.execute("SELECT count(*) AS n FROM m")).rows[0].n, 2n);

// Migrations as drizzle's migrator runs them: foreign keys off around a batch.
await db.migrate(["CREATE TABLE parent(id INTEGER PRIMARY KEY)",
  "CREATE TABLE child(id INTEGER PRIMARY KEY, p INTEGER REFERENCES parent(id))"]);
await db.execute("INSERT INTO parent VALUES (1)");
await db.execute("INSERT INTO child VALUES (1, 1)");

// Queries in parallel beside an open transaction: none waits on another's stream.
const held = await db.transaction("write");
await held.execute("INSERT INTO m VALUES (3)");
const parallel = await Promise.all([1, 2, 3, 4].map(() => db.execute("SELECT count(*) AS n FROM t")));
assert.deepEqual(parallel.map((r) => r.rows[0].n), [5n, 5n, 5n, 5n]);
await held.commit();
assert.equal((await db.execute("SELECT count(*) AS n FROM m")).rows[0].n, 3n);

// 10,000 rows in batches of 2,500 (a batch's body stays under the 1 MiB default
// --max-body-bytes), and read back in one answer.
await db.execute("CREATE TABLE many(i INTEGER PRIMARY KEY, s TEXT)");
for (let from = 0; from < 10000; from += 2500) {
  const inserts = Array.from({ length: 2500 }, (_, k) => ({
    sql: "INSERT INTO many VALUES (?, ?)",
    args: [from + k, `row ${from + k}`],
  }));
  await db.batch(inserts, "write");
}
const many = await db.execute("SELECT i, s FROM many ORDER BY i");
assert.equal(many.rows.length, 10000);
assert.equal(many.rows[9999].s, "row 9999");

// A revoked credential stops working at once, on this transport too.
if (sessionToken && keyId) {
  const base = url.replace(/^ws/, "http").replace(/^libsql:\/\/([^?]*)\?tls=0/, "http://$1");
  const revoked = await fetch(`${base}/v1/api-keys/${keyId}`, {
    method: "DELETE",
    headers: { authorization: `Bearer ${sessionToken}` },
  });
  assert.equal(revoked.status, 204);
  await rejects(db.execute("SELECT 1"), /revoked|no longer|invalid|unauthenticated|401|closed/i, "revoked key");
}

db.close();
viewer.close();
other.close();
console.log(`typescript client over ${url.split(":")[0]}: ok`);
