// drizzle-orm and drizzle-kit against a running silo, as their docs tell users to run them.
// Usage: node drizzle_test.mjs <url> <token of tenant A> <token of tenant B>
//  - tenant A: `drizzle-kit push` of a schema, rows written with drizzle-orm, then a push that
//    rebuilds `users` (adds a CHECK) while `posts` references it: no row may be lost (the
//    rebuild's DROP TABLE cascaded when foreign keys could not be turned off);
//  - tenant B: migrations made by `drizzle-kit generate`, applied by drizzle-orm's
//    `migrate()` (which sends PRAGMA foreign_keys=off/on as batch steps), the second one a
//    table rebuild; the process must end with status 0.
// Exits non-zero with a message on the first failed check.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { rmSync } from "node:fs";
import { createClient } from "@libsql/client";
import { drizzle } from "drizzle-orm/libsql";
import { migrate } from "drizzle-orm/libsql/migrator";
import { eq, sql } from "drizzle-orm";
import * as schema1 from "./schema1.mjs";

const [url, tokenA, tokenB] = process.argv.slice(2);
// drizzle wraps the driver's error ("Failed query: …"); the database's reason is its cause.
const rejectsWith = (promise, pattern) =>
  assert.rejects(promise, (e) => pattern.test(`${e.message} ${e.cause?.message ?? ""}`));
const kit = (args, env) =>
  execFileSync("node_modules/.bin/drizzle-kit", args, {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
    encoding: "utf8",
  });

// Tenant A: push, write, push a rebuild.
const push = (schema) =>
  kit(["push", "--config", "drizzle.config.mjs", "--force"], {
    SCHEMA: schema,
    DB_URL: url,
    DB_TOKEN: tokenA,
  });
push("./schema1.mjs");
const a = drizzle(createClient({ url, authToken: tokenA }), { schema: schema1 });
await a.insert(schema1.users).values([{ id: 1, name: "ann" }, { id: 2, name: "bob" }]);
await a.insert(schema1.posts).values([
  { id: 1, userId: 1, title: "hello" },
  { id: 2, userId: 2, title: "again" },
  { id: 3, userId: 2, title: "third" },
]);
push("./schema2.mjs");
const posts = await a.select().from(schema1.posts).orderBy(schema1.posts.id);
assert.deepEqual(posts.map((p) => p.title), ["hello", "again", "third"], "rows kept by the rebuild");
const joined = await a
  .select({ title: schema1.posts.title, name: schema1.users.name })
  .from(schema1.posts)
  .innerJoin(schema1.users, eq(schema1.posts.userId, schema1.users.id))
  .where(eq(schema1.users.name, "bob"));
assert.equal(joined.length, 2);
// The new CHECK holds.
await rejectsWith(a.insert(schema1.users).values({ id: 3, name: "" }), /CHECK/);
// Foreign keys are on again for everyone after the push.
await rejectsWith(a.insert(schema1.posts).values({ id: 9, userId: 99, title: "x" }), /FOREIGN KEY/);

// Tenant B: generate, then migrate().
rmSync("out", { recursive: true, force: true });
for (const schema of ["./schema1.mjs", "./schema2.mjs"]) {
  kit(["generate", "--dialect", "turso", "--schema", schema, "--out", "out"], {});
}
const clientB = createClient({ url, authToken: tokenB });
const b = drizzle(clientB, { schema: schema1 });
await migrate(b, { migrationsFolder: "out" });
await b.insert(schema1.users).values({ id: 1, name: "cy" });
await rejectsWith(b.insert(schema1.users).values({ id: 2, name: "" }), /CHECK/);
const applied = await b.all(sql`SELECT count(*) AS n FROM __drizzle_migrations`);
assert.equal(Number(applied[0].n), 2);
// A second run has nothing to do.
await migrate(b, { migrationsFolder: "out" });
clientB.close();
console.log("drizzle: ok");
