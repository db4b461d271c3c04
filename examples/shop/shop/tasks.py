"""A Django task (the Tasks API: ``@task``, ``.enqueue()``), run by Leveret's workers."""

from django.db.models import F

try:  # Django 6 has the Tasks API built in; on 5.2 it is the django-tasks package
    from django.tasks import task
except ImportError:
    from django_tasks import task

from shop.models import Product


@task()
def restock(product_id: int, quantity: int) -> None:
    """Add `quantity` units to a product's stock (retried if it fails, then dead-lettered)."""
    if quantity <= 0:
        raise ValueError(f"restock needs a positive quantity, not {quantity}")
    Product.objects.filter(id=product_id).update(stock=F("stock") + quantity)
