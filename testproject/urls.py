"""Demo pages, login for the "user_or_ip" example, and the cluster endpoints."""

from __future__ import annotations

from importlib.util import find_spec

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.urls import path

from testproject import bench_views, cluster, faults, views

urlpatterns = [
    path("", views.home, name="home"),
    path("limited/", views.limited, name="limited"),
    path("comment/", views.comment, name="comment"),
    path("api/hello/", views.api_hello, name="api-hello"),
    path("cbv/", views.CbvDemo.as_view(), name="cbv"),
    path("admin/", admin.site.urls),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("cluster/hit/", cluster.hit, name="cluster-hit"),
    path("cluster/ahit/", cluster.ahit, name="cluster-ahit"),
    path("cluster/tokens/", cluster.token_hit, name="cluster-tokens"),
    path("cluster/leaky/", cluster.leaky_hit, name="cluster-leaky"),
    path("cluster/state/", cluster.state, name="cluster-state"),
    path("cluster/noop/", cluster.noop, name="cluster-noop"),
    # tests/faults/: decisions with their counts, a header-keyed route, a process's memory.
    path("faults/hit/", faults.hit, name="faults-hit"),
    path("faults/keyed/", faults.keyed, name="faults-keyed"),
    path("faults/proc/", faults.proc, name="faults-proc"),
    # bench/bench_http.py: one endpoint per limiter, same view body.
    path("bench/noop/", bench_views.noop, name="bench-noop"),
    path("bench/eventual/", bench_views.eventual, name="bench-eventual"),
    path("bench/eventual/acc/", bench_views.eventual_acc, name="bench-eventual-acc"),
    path("bench/strict/", bench_views.strict, name="bench-strict"),
    path("bench/strict/acc/", bench_views.strict_acc, name="bench-strict-acc"),
    path("bench/dr/", bench_views.dr, name="bench-dr"),
    path("bench/dr/acc/", bench_views.dr_acc, name="bench-dr-acc"),
]

if find_spec("rest_framework") is not None:  # the [drf] extra
    from testproject import drf_views

    urlpatterns += [
        path("cluster/drf/", drf_views.ClusterDrf.as_view(), name="cluster-drf"),
        path(
            "cluster/drf-strict/", drf_views.ClusterDrfStrict.as_view(), name="cluster-drf-strict"
        ),
    ]
# With DEBUG on, the admin's static files under uvicorn and gunicorn too (runserver
# serves them by itself); with DEBUG off this adds nothing.
urlpatterns += staticfiles_urlpatterns()
