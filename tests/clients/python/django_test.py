"""Django through `django-libsql-backend` against a running silo: `migrate` (the app's
initial migration, then an AlterField that SQLite makes by rebuilding the table), and the
ORM: create, filter across a foreign key, update, delete, an atomic block that rolls back.

Not here: an AlterField on a table others reference. The backend sends each statement as
its own request (Hrana over HTTP v1), so the `PRAGMA foreign_keys = OFF` Django sends
before rebuilding a table holds for that request only, and silo's tenant databases keep
foreign keys on; the rebuild's DROP TABLE then fails (atomically, nothing lost). On sqld,
foreign keys are off unless a connection turns them on.

Usage: python django_test.py <url> <token>
"""

import os
import sys

url, token = sys.argv[1:3]
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import django
from django.conf import settings

settings.configure(
    INSTALLED_APPS=["shop"],
    DATABASES={"default": {"ENGINE": "django_libsql", "NAME": url, "AUTH_TOKEN": token}},
    USE_TZ=True,
    DEFAULT_AUTO_FIELD="django.db.models.AutoField",
)
django.setup()

from django.core.management import call_command
from django.db import transaction

call_command("migrate", verbosity=0)

from shop.models import Customer, Order

ann = Customer.objects.create(name="ann")
bob = Customer.objects.create(name="bob")
Order.objects.create(customer=ann, total=10, note=None)
Order.objects.create(customer=ann, total=2**40, note="big")
Order.objects.create(customer=bob, total=5, note="bob's")
got = list(Order.objects.filter(customer__name="ann").order_by("total").values_list("total", "note"))
assert got == [(10, None), (2**40, "big")], got
Order.objects.filter(customer=bob).update(total=6)
assert Order.objects.get(customer=bob).total == 6
# The backend buffers an atomic block's writes and sends them at commit (an INSERT whose
# id is read is sent at once: the backend's own limit, documented in its module).
try:
    with transaction.atomic():
        Customer.objects.filter(name="bob").update(name="robert")
        raise RuntimeError("roll back")
except RuntimeError:
    pass
assert Customer.objects.filter(name="bob").count() == 1
Order.objects.filter(total=6).delete()
assert Order.objects.count() == 2
print("django: ok")
