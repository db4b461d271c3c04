"""A product with a stock, an order, and the confirmation mail we pretend to send."""

from django.db import models


class Product(models.Model):
    """Something to sell."""

    name = models.CharField(max_length=100)
    stock = models.IntegerField(default=0)


class Order(models.Model):
    """One order of `quantity` units of a product."""

    product = models.ForeignKey(Product, on_delete=models.PROTECT)
    quantity = models.IntegerField()
    email = models.CharField(max_length=200)


class Confirmation(models.Model):
    """A confirmation mail, sent once per order (the actor is idempotent)."""

    order = models.OneToOneField(Order, on_delete=models.CASCADE)
    text = models.TextField()


class StockMovement(models.Model):
    """Stock taken for one order, once (makes the stock actor idempotent)."""

    order = models.OneToOneField(Order, on_delete=models.CASCADE)
    quantity = models.IntegerField()
