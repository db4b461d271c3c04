"""The shop app."""

from django.apps import AppConfig


class ShopConfig(AppConfig):
    """Products, orders, and the actors that follow an order."""

    name = "shop"
    default_auto_field = "django.db.models.BigAutoField"
