from django.urls import path
from djbench import views

urlpatterns = [
    path("items/", views.items, name="items"),
    path("status/", views.status, name="status"),
]
