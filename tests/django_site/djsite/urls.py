from django.contrib import admin
from django.urls import path

from djsite import views

urlpatterns = [
    path("", views.links, name="links"),
    path("upload/", views.upload, name="upload"),
    path("query/", views.query, name="query"),
    path("caf\u00e9/<str:name>/", views.links, name="unicode"),
    path("admin/", admin.site.urls),
]
