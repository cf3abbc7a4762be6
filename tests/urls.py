from __future__ import annotations

from django.urls import path

from tests import views

urlpatterns = [
    path("sync/", views.sync_view),
    path("async/", views.async_view),
    path("cbv/", views.LimitedView.as_view()),
    path("open/", views.open_view),
    path("api/thing/", views.open_view),
    path("nonblock/", views.nonblocking_view),
]
