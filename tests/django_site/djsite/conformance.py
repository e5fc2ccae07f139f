"""The project under /t/dj/, for the conformance matrix, whose fronts route /t/... to the backend.

The paths of the project itself are unchanged (djsite.urls); only their prefix differs.
"""

from django.urls import include, path

urlpatterns = [path("t/dj/", include("djsite.urls"))]
