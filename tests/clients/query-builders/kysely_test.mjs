// kysely through @libsql/kysely-libsql against a running silo: schema, inserts with a blob
// and NULL, a select with a bound parameter, a transaction that commits and one that rolls
// back, and introspection (which sees only the tenant's tables).
// Usage: node kysely_test.mjs <url> <token>
import assert from "node:assert/strict";
import { Kysely, sql } from "kysely";
import { LibsqlDialect } from "@libsql/kysely-libsql";

const [url, token] = process.argv.slice(2);
const db = new Kysely({ dialect: new LibsqlDialect({ url, authToken: token }) });
await db.schema
  .createTable("pets")
  .addColumn("id", "integer", (c) => c.primaryKey())
  .addColumn("name", "text", (c) => c.notNull())
  .addColumn("photo", "blob")
  .execute();
await db
  .insertInto("pets")
  .values([
    { id: 1, name: "rex", photo: new Uint8Array([1, 2, 255]) },
    { id: 2, name: "tom", photo: null },
  ])
  .execute();
const rex = await db.selectFrom("pets").selectAll().where("name", "=", "rex").executeTakeFirst();
assert.deepEqual(new Uint8Array(rex.photo), new Uint8Array([1, 2, 255]));
await db.transaction().execute(async (tx) => {
  await tx.updateTable("pets").set({ name: "max" }).where("id", "=", 2).execute();
});
await assert.rejects(
  db.transaction().execute(async (tx) => {
    await tx.deleteFrom("pets").execute();
    throw new Error("roll back");
  }),
  /roll back/,
);
const names = await db.selectFrom("pets").select("name").orderBy("id").execute();
assert.deepEqual(names.map((r) => r.name), ["rex", "max"]);
const tables = await db.introspection.getTables();
assert.deepEqual(tables.map((t) => t.name), ["pets"]);
await db.destroy();
console.log("kysely: ok");
