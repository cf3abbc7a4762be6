"""The keys that sign sync messages, and the groups they travel on, from the site's settings."""

from __future__ import annotations

from django.conf import settings
from django.utils.crypto import salted_hmac

from ..conf import conf, group_for_secret

_SALT = "django_dratelimit.sync.signing"


def _secrets() -> list[str]:
    secret = settings.SECRET_KEY
    fallbacks = list(getattr(settings, "SECRET_KEY_FALLBACKS", ()) or ())
    return [str(s) for s in [secret, *fallbacks] if s]


def signing_keys() -> list[bytes]:
    """SECRET_KEY's signing key first, then those of SECRET_KEY_FALLBACKS.

    Messages are signed with all of them and accepted under any of them, so
    processes on both sides of a key rotation keep syncing.
    """
    keys = []
    for secret in _secrets():
        key = salted_hmac(_SALT, "sync protocol v2", secret=secret, algorithm="sha256").digest()
        if key not in keys:
            keys.append(key)
    return keys


def sync_groups() -> list[str]:
    """The groups to join and send to: the configured GROUP, or one per secret.

    The default group is derived from SECRET_KEY; during a key rotation a
    process also joins (and sends to) the groups of its fallbacks, where the
    processes that do not have the new key yet are.
    """
    if conf.group_setting() is not None:
        return [conf.GROUP]
    groups = []
    for secret in _secrets():
        group = group_for_secret(secret)
        if group not in groups:
            groups.append(group)
    return groups or [conf.GROUP]
