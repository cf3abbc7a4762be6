"""No tables: one unmanaged model gives the live admin page its place in the admin.

The counters live in the memory of the processes, not in the database. The
model exists for what the admin and the auth framework hang on a model: an
entry in the admin index, and a content type for the reset permission
(``django_dratelimit.reset_counters``), created by ``migrate`` like any other.
"""

from __future__ import annotations

from django.db import models

RESET_PERMISSION = "django_dratelimit.reset_counters"


class LiveCounters(models.Model):
    class Meta:
        managed = False  # no table, and no migration to create one
        default_permissions = ()  # nothing to add, change, delete or view row by row
        permissions = [("reset_counters", "Can reset rate-limit counters on every process")]
        verbose_name = "live counters"
        verbose_name_plural = "live counters"

    def __str__(self) -> str:
        return "live counters"
