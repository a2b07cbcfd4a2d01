# The models of the Django test: an order references a customer. Migration 0002 changes
# the type of `total`, which SQLite makes by rebuilding the table.
from django.db import models

class Customer(models.Model):
    name = models.CharField(max_length=50)
    class Meta:
        app_label = "shop"

class Order(models.Model):
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE)
    total = models.BigIntegerField(default=0)
    note = models.TextField(null=True)
    class Meta:
        app_label = "shop"
