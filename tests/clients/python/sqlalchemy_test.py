"""SQLAlchemy through `sqlalchemy-libsql` against a running silo: create_all, inserts,
selects with bound parameters, reflection (which sees only the tenant's tables), a
transaction that rolls back, and a constraint's error.

Usage: python sqlalchemy_test.py <url> <token>
"""

import sys

from sqlalchemy import (
    Column,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import IntegrityError

url, token = sys.argv[1:3]
host = url.split("://", 1)[1]
engine = create_engine(
    f"sqlite+libsql://{host}/?secure=false", connect_args={"auth_token": token}
)
md = MetaData()
users = Table(
    "users",
    md,
    Column("id", Integer, primary_key=True),
    Column("name", String(50), nullable=False, unique=True),
)
posts = Table(
    "posts",
    md,
    Column("id", Integer, primary_key=True),
    Column("user_id", ForeignKey("users.id")),
    Column("title", String),
)
md.create_all(engine)
with engine.begin() as c:
    c.execute(users.insert(), [{"id": 1, "name": "ann"}, {"id": 2, "name": "bob"}])
    c.execute(posts.insert(), [{"id": 1, "user_id": 1, "title": "t"}])
with engine.connect() as c:
    assert c.execute(select(users.c.name).order_by(users.c.id)).scalars().all() == ["ann", "bob"]
    assert c.execute(text("SELECT name FROM users WHERE id = :i"), {"i": 2}).scalar() == "bob"
    assert c.execute(text("SELECT :n IS NULL"), {"n": None}).scalar() == 1

insp = inspect(engine)
assert insp.get_table_names() == ["posts", "users"], insp.get_table_names()
assert [c["name"] for c in insp.get_columns("posts")] == ["id", "user_id", "title"]
assert insp.get_foreign_keys("posts")[0]["referred_table"] == "users"

try:
    with engine.begin() as c:
        c.execute(users.insert(), [{"id": 3, "name": "cy"}])
        raise RuntimeError("roll back")
except RuntimeError:
    pass
with engine.connect() as c:
    assert c.execute(text("SELECT count(*) FROM users")).scalar() == 2

# libsql-experimental raises a ValueError for a statement's error, not IntegrityError.
try:
    with engine.begin() as c:
        c.execute(users.insert(), [{"id": 4, "name": "ann"}])
    raise AssertionError("a duplicate name was accepted")
except (IntegrityError, ValueError) as e:
    assert "UNIQUE" in str(e), e

print("sqlalchemy: ok")
