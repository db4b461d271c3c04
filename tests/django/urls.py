"""The example shop's URLs, the admin (the outbox's admin tests) and the dashboard."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("leveret/", include("leveret.django.dashboard")),
    path("", include("shop_project.urls")),
]
