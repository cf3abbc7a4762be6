"""Demo pages, login for the "user_or_ip" example, and the cluster endpoints."""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path

from testproject import cluster, views

urlpatterns = [
    path("", views.home, name="home"),
    path("limited/", views.limited, name="limited"),
    path("comment/", views.comment, name="comment"),
    path("api/hello/", views.api_hello, name="api-hello"),
    path("cbv/", views.CbvDemo.as_view(), name="cbv"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("cluster/hit/", cluster.hit, name="cluster-hit"),
    path("cluster/ahit/", cluster.ahit, name="cluster-ahit"),
    path("cluster/state/", cluster.state, name="cluster-state"),
    path("cluster/noop/", cluster.noop, name="cluster-noop"),
]
