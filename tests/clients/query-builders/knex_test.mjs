// knex through @libsql/knex-libsql (the `libsql` native driver, remote over HTTP) against
// a running silo: createTable with a reference, inserts, `alterTable` (a column and a
// unique index) and `dropColumn` (SQLite rebuilds the table), a join, a transaction that
// rolls back, a constraint's error.
// Usage: node knex_test.mjs <url> <token>
import assert from "node:assert/strict";
import knexFactory from "knex";
import Client_Libsql from "@libsql/knex-libsql";

const [url, token] = process.argv.slice(2);
const knex = knexFactory({
  client: Client_Libsql,
  connection: { filename: `${url}?authToken=${token}` },
  useNullAsDefault: true,
});
await knex.schema.createTable("authors", (t) => {
  t.increments("id");
  t.string("name").notNullable();
});
await knex.schema.createTable("books", (t) => {
  t.increments("id");
  t.integer("author_id").references("authors.id");
  t.string("title");
  t.string("obsolete");
});
await knex("authors").insert([{ name: "ann" }, { name: "bob" }]);
await knex("books").insert([
  { author_id: 1, title: "t1", obsolete: "x" },
  { author_id: 2, title: "t2", obsolete: null },
]);
await knex.schema.alterTable("authors", (t) => {
  t.string("email").nullable();
  t.unique(["name"]);
});
await knex.schema.alterTable("books", (t) => {
  t.dropColumn("obsolete");
});
const rows = await knex("books")
  .join("authors", "books.author_id", "authors.id")
  .select("title", "name")
  .where("name", "=", "bob");
assert.deepEqual(rows, [{ title: "t2", name: "bob" }]);
assert.deepEqual(Object.keys((await knex("books").first()) ?? {}), ["id", "author_id", "title"]);
await assert.rejects(
  knex.transaction(async (tx) => {
    await tx("books").del();
    throw new Error("roll back");
  }),
  /roll back/,
);
assert.equal(Number((await knex("books").count({ n: "*" }))[0].n), 2);
await assert.rejects(knex("authors").insert({ name: "ann" }), /UNIQUE/);
await knex.destroy();
console.log("knex: ok");
