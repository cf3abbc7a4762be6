from __future__ import annotations

from django.contrib import admin
from django.urls import path
from prometheus_client.django import PrometheusDjangoView

from tests import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("metrics/", PrometheusDjangoView.as_view()),
    path("sync/", views.sync_view),
    path("async/", views.async_view),
    path("cbv/", views.LimitedView.as_view()),
    path("async-cbv/", views.AsyncLimitedView.as_view()),
    path("open/", views.open_view),
    path("async-open/", views.async_open_view),
    path("api/thing/", views.open_view),
    path("api/other/", views.open_view),
    path("api/async/", views.async_open_view),
    path("nonblock/", views.nonblocking_view),
    path("async-nonblock/", views.async_nonblocking_view),
    path("stacked/outer/", views.stacked_outer_limits_view),
    path("stacked/inner/", views.stacked_inner_limits_view),
    path("stacked/inapplicable/", views.stacked_inapplicable_view),
    path("method/all/", views.method_all_view),
    path("method/unsafe/", views.method_unsafe_view),
    path("method/post/", views.method_post_view),
    path("method/list/", views.method_list_view),
    path("shared/a/", views.shared_a_view),
    path("shared/b/", views.shared_b_view),
    path("key/header/", views.header_key_view),
    path("key/user/", views.user_key_view),
    path("key/async-user/", views.async_user_key_view),
    path("key/async-callable-user/", views.async_callable_user_key_view),
    path("key/broken/", views.broken_key_view),
    path("rate/callable/", views.callable_rate_view),
    path("rate/dotted/", views.dotted_rate_view),
    path("rate/multi/", views.multi_rate_view),
    path("algo/sliding/", views.sliding_view),
    path("algo/fixed/", views.fixed_view),
]
