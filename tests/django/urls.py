"""The example shop's URLs, and the admin (the outbox's admin tests)."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("shop_project.urls")),
]
