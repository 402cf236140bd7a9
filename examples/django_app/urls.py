"""The example project's one route."""

import views
from django.urls import path

urlpatterns = [path("catalog/", views.catalog)]
