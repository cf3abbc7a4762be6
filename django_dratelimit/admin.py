"""The live counters page in the Django admin: ``admin:dratelimit_live``.

A ModelAdmin for the table-less ``LiveCounters`` model, whose URLs are the
page, its JSON endpoint and the reset confirmation (django-rq shows its queues
the same way). Staff see the page; resetting needs ``reset_counters``. Nothing
is asked until someone opens the page: ``ops.live`` and the client it uses are
imported by the views.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.decorators import method_decorator
from django.utils.http import urlencode
from django.views.decorators.http import require_GET, require_http_methods

from .models import RESET_PERMISSION, LiveCounters
from .sync.protocol import MAX_TEXT

if TYPE_CHECKING:
    from .ops.live import Snapshot

    _ModelAdmin = admin.ModelAdmin[LiveCounters]
else:  # generic only for the type checker (django-stubs); not subscriptable at run time
    _ModelAdmin = admin.ModelAdmin

TABLE_TEMPLATE = "admin/django_dratelimit/live_table.html"


@admin.register(LiveCounters)
class LiveCountersAdmin(_ModelAdmin):
    # Tunable in a subclass, registered instead (docs/admin.md).
    inspect_timeout = 1.0  # seconds every refresh waits for the processes' answers
    reset_timeout = 2.0  # seconds a reset waits for confirmations: rare, so be sure
    inspect_limit = 1_000  # buckets asked of each process, hottest first
    per_group = 10  # rows shown per group
    refresh_seconds = 5  # 0: no refresh

    # -- permissions: a page, not rows ---------------------------------------------

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_active and request.user.is_staff)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def can_reset(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm(RESET_PERMISSION))

    # -- URLs -----------------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        # admin_view: active staff only (others go to the login), CSRF-protected, never cached.
        wrap = self.admin_site.admin_view
        info = self.opts.app_label, self.opts.model_name
        live = wrap(self.live_view)
        return [
            path("", live, name="dratelimit_live"),
            # The name the admin index links to; the same page.
            path("", live, name="{}_{}_changelist".format(*info)),
            path("data/", wrap(self.data_view), name="dratelimit_live_data"),
            path("reset/", wrap(self.reset_view), name="dratelimit_reset"),
        ]

    # -- views ------------------------------------------------------------------------

    def _snapshot(self, request: HttpRequest) -> Snapshot:
        from .ops import live

        group, key = search_terms(request)
        return live.snapshot(group, key, self.inspect_timeout, self.inspect_limit, self.per_group)

    def _back(self) -> HttpResponseRedirect:
        return HttpResponseRedirect(reverse(f"{self.admin_site.name}:dratelimit_live"))

    @method_decorator(require_GET)
    def live_view(self, request: HttpRequest) -> HttpResponse:
        snapshot = self._snapshot(request)
        group, key = search_terms(request)
        query = search_query(group, key)
        data_url = reverse(f"{self.admin_site.name}:dratelimit_live_data")
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Live rate-limit counters",
            "snapshot": snapshot,
            "can_reset": self.can_reset(request),
            "search_group": group or "",
            "search_key": key or "",
            "data_url": f"{data_url}?{query}" if query else data_url,
            "refresh_seconds": self.refresh_seconds,
        }
        return TemplateResponse(request, "admin/django_dratelimit/live.html", context)

    @method_decorator(require_GET)
    def data_view(self, request: HttpRequest) -> HttpResponse:
        """The page's table as JSON, and rendered by the page's own template for the refresh."""
        snapshot = self._snapshot(request)
        can_reset = self.can_reset(request)
        html = render_to_string(
            TABLE_TEMPLATE, {"snapshot": snapshot, "can_reset": can_reset}, request=request
        )
        return JsonResponse({**snapshot.as_dict(), "can_reset": can_reset, "html": html})

    @method_decorator(require_http_methods(["GET", "POST"]))
    def reset_view(self, request: HttpRequest) -> HttpResponse:
        """GET: the confirmation; POST: reset on every process, then back to the page."""
        if not self.can_reset(request):
            raise PermissionDenied
        source = request.POST if request.method == "POST" else request.GET
        group = source.get("group", "").strip()
        key = source.get("key", "").strip() or None
        if not group:
            messages.error(request, "Choose a group to reset.")
            return self._back()
        if request.method == "POST":
            from .ops import live

            outcome = live.reset(group, key, self.reset_timeout, request.user.get_username())
            (messages.success if outcome.ok else messages.error)(request, outcome.message)
            return self._back()
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Reset rate-limit counters",
            "group": group,
            "key": key,
        }
        return TemplateResponse(request, "admin/django_dratelimit/reset_confirm.html", context)


def search_terms(request: HttpRequest) -> tuple[str | None, str | None]:
    """The search form's group (exact) and key (a substring); None when empty."""
    group = request.GET.get("group", "").strip()[:MAX_TEXT] or None
    key = request.GET.get("key", "").strip()[:MAX_TEXT] or None
    return group, key


def search_query(group: str | None, key: str | None) -> str:
    return urlencode({k: v for k, v in (("group", group), ("key", key)) if v})
