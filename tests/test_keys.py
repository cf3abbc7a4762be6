"""Request keys: ip (masked, proxy-aware), user, header/get/post, callables, errors."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser, User
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest
from django.test import RequestFactory, override_settings

from django_dratelimit import logutil
from django_dratelimit.keys import (
    MAX_KEY_BYTES,
    InvalidKey,
    MissingClientAddress,
    client_ip,
    compile_key,
    mask_ip,
    normalize,
    resolve_key,
)

# -- helpers referenced by dotted path ("tests.test_keys.<name>") --------------------------


def tenant_key(group: str, request: HttpRequest) -> str | None:
    return request.GET.get("tenant")


def group_key(group: str, request: HttpRequest) -> str:
    return f"{group}!"


def int_key(group: str, request: HttpRequest) -> int:
    return 42


def broken_key(group: str, request: HttpRequest) -> str:
    raise RuntimeError("boom")


def ip_from_header(request: HttpRequest) -> str | None:
    return request.META.get("HTTP_X_CLIENT")


NOT_CALLABLE = 17


@pytest.fixture(autouse=True)
def _unthrottled_logs() -> None:
    """Each test sees a key-function error logged, whatever earlier tests logged."""
    logutil.forget()


def _request(rf: RequestFactory, remote_addr: str | None = "203.0.113.7", **meta: Any) -> Any:
    request = rf.get("/", **meta)
    if remote_addr is None:
        del request.META["REMOTE_ADDR"]
    else:
        request.META["REMOTE_ADDR"] = remote_addr
    return request


# -- ip ----------------------------------------------------------------------------


def test_ip_uses_remote_addr(rf: RequestFactory) -> None:
    assert resolve_key("ip", "g", _request(rf, "203.0.113.7")) == "203.0.113.7"


def test_ipv4_default_mask_is_32(rf: RequestFactory) -> None:
    assert resolve_key("ip", "g", _request(rf, "198.51.100.255")) == "198.51.100.255"
    assert resolve_key("ip", "g", _request(rf, "198.51.100.1")) != resolve_key(
        "ip", "g", _request(rf, "198.51.100.2")
    )


def test_ipv6_default_mask_is_64(rf: RequestFactory) -> None:
    a = resolve_key("ip", "g", _request(rf, "2001:db8:1:2:aaaa:bbbb:cccc:dddd"))
    b = resolve_key("ip", "g", _request(rf, "2001:db8:1:2::1"))
    c = resolve_key("ip", "g", _request(rf, "2001:db8:1:3::1"))
    assert a == b == "2001:db8:1:2::"
    assert c == "2001:db8:1:3::"


def test_ipv6_is_normalised(rf: RequestFactory) -> None:
    assert resolve_key("ip", "g", _request(rf, "2001:DB8:0:0::1")) == "2001:db8::"


@override_settings(DRATELIMIT={"IPV4_MASK": 24})
def test_custom_ipv4_mask(rf: RequestFactory) -> None:
    assert resolve_key("ip", "g", _request(rf, "203.0.113.7")) == "203.0.113.0"
    assert resolve_key("ip", "g", _request(rf, "203.0.113.200")) == "203.0.113.0"
    assert resolve_key("ip", "g", _request(rf, "203.0.114.7")) == "203.0.114.0"


@override_settings(DRATELIMIT={"IPV6_MASK": 48})
def test_custom_ipv6_mask(rf: RequestFactory) -> None:
    assert resolve_key("ip", "g", _request(rf, "2001:db8:1:ffff::1")) == "2001:db8:1::"


@override_settings(DRATELIMIT={"IPV6_MASK": 128, "IPV4_MASK": 16})
def test_full_ipv6_mask_keeps_the_address(rf: RequestFactory) -> None:
    assert resolve_key("ip", "g", _request(rf, "2001:db8::7")) == "2001:db8::7"
    assert resolve_key("ip", "g", _request(rf, "203.0.113.7")) == "203.0.0.0"


def test_settings_fixture_changes_the_mask(rf: RequestFactory, settings: Any) -> None:
    settings.DRATELIMIT = {"IPV4_MASK": 8}
    assert resolve_key("ip", "g", _request(rf, "203.0.113.7")) == "203.0.0.0"


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("203.0.113.7:5678", "203.0.113.7"),
        ("[2001:db8::1]:443", "2001:db8::"),
        ("[2001:db8::1]", "2001:db8::"),
        ("  203.0.113.7  ", "203.0.113.7"),
    ],
)
def test_ports_and_brackets_are_stripped(address: str, expected: str) -> None:
    assert mask_ip(address, 32, 64) == expected


@pytest.mark.parametrize(
    ("address", "v4_mask", "expected"),
    [
        ("::ffff:203.0.113.7", 32, "203.0.113.7"),
        ("::ffff:203.0.113.7", 24, "203.0.113.0"),
        ("::ffff:cb00:7107", 32, "203.0.113.7"),
        ("[::ffff:203.0.113.7]:80", 32, "203.0.113.7"),
    ],
)
def test_ipv4_mapped_ipv6_counts_as_ipv4(address: str, v4_mask: int, expected: str) -> None:
    assert mask_ip(address, v4_mask, 64) == expected


def test_ipv4_mapped_and_plain_ipv4_share_a_key(rf: RequestFactory) -> None:
    assert resolve_key("ip", "g", _request(rf, "::ffff:203.0.113.7")) == resolve_key(
        "ip", "g", _request(rf, "203.0.113.7")
    )


@pytest.mark.parametrize(
    "address",
    ["", "unknown", "not-an-ip", "999.1.1.1", "1.2.3", "1.2.3.4.5", "2001:db8::g", "[::1", "a:b"],
)
def test_invalid_addresses_are_a_configuration_error(rf: RequestFactory, address: str) -> None:
    # An ip limit that cannot find the address must not silently stop limiting.
    assert mask_ip(address, 32, 64) is None
    with pytest.raises(MissingClientAddress, match="REMOTE_ADDR") as info:
        resolve_key("ip", "g", _request(rf, address))
    assert isinstance(info.value, ImproperlyConfigured)
    assert ("is empty" if address == "" else repr(address)) in str(info.value)
    assert "IP_META_KEY" in str(info.value)  # says how to fix it


def test_missing_remote_addr_is_a_configuration_error(rf: RequestFactory) -> None:
    with pytest.raises(MissingClientAddress, match="REMOTE_ADDR is missing"):
        resolve_key("ip", "g", _request(rf, None))
    with pytest.raises(MissingClientAddress, match="REMOTE_ADDR is missing"):
        client_ip(_request(rf, None))


@override_settings(DRATELIMIT={"IP_META_KEY": "HTTP_X_REAL_IP"})
def test_ip_meta_key_names_a_meta_entry(rf: RequestFactory) -> None:
    request = _request(rf, "10.0.0.1", HTTP_X_REAL_IP="198.51.100.9")
    assert resolve_key("ip", "g", request) == "198.51.100.9"
    with pytest.raises(MissingClientAddress, match=r"request.META\['HTTP_X_REAL_IP'\]"):
        resolve_key("ip", "g", _request(rf, "10.0.0.1"))


@override_settings(DRATELIMIT={"IP_META_KEY": "HTTP_X_FORWARDED_FOR"})
@pytest.mark.parametrize(
    ("forwarded", "expected"),
    [
        ("198.51.100.9", "198.51.100.9"),
        ("1.1.1.1, 198.51.100.9", "198.51.100.9"),
        ("6.6.6.6,1.1.1.1,  198.51.100.9", "198.51.100.9"),
        ("spoofed, 198.51.100.9:1234", "198.51.100.9"),
        ("2001:db8::1, [2001:db8:0:5::1]:443", "2001:db8:0:5::"),
    ],
)
def test_x_forwarded_for_uses_the_right_most_entry(
    rf: RequestFactory, forwarded: str, expected: str
) -> None:
    request = _request(rf, "10.0.0.1", HTTP_X_FORWARDED_FOR=forwarded)
    assert resolve_key("ip", "g", request) == expected


@override_settings(DRATELIMIT={"IP_META_KEY": "HTTP_X_FORWARDED_FOR"})
def test_x_forwarded_for_with_garbage_from_the_proxy_is_an_error(rf: RequestFactory) -> None:
    request = _request(rf, "10.0.0.1", HTTP_X_FORWARDED_FOR="198.51.100.9, garbage")
    with pytest.raises(MissingClientAddress, match="is ' garbage'"):
        resolve_key("ip", "g", request)


@override_settings(DRATELIMIT={"IP_META_KEY": "HTTP_X_FORWARDED_FOR", "IPV4_MASK": 24})
def test_x_forwarded_for_is_masked(rf: RequestFactory) -> None:
    request = _request(rf, "10.0.0.1", HTTP_X_FORWARDED_FOR="1.1.1.1, 198.51.100.9")
    assert client_ip(request) == "198.51.100.0"


@override_settings(DRATELIMIT={"IP_META_KEY": ip_from_header})
def test_ip_meta_key_as_callable(rf: RequestFactory) -> None:
    assert resolve_key("ip", "g", _request(rf, "10.0.0.1", HTTP_X_CLIENT="198.51.100.4")) == (
        "198.51.100.4"
    )
    with pytest.raises(MissingClientAddress, match="'ip_from_header' is missing"):
        resolve_key("ip", "g", _request(rf, "10.0.0.1"))


@override_settings(DRATELIMIT={"IP_META_KEY": "tests.test_keys.ip_from_header"})
def test_ip_meta_key_as_dotted_path(rf: RequestFactory) -> None:
    assert resolve_key("ip", "g", _request(rf, "10.0.0.1", HTTP_X_CLIENT="198.51.100.4")) == (
        "198.51.100.4"
    )


@override_settings(DRATELIMIT={"IP_META_KEY": lambda request: 1234})
def test_ip_meta_key_callable_returning_a_non_string(rf: RequestFactory) -> None:
    with pytest.raises(MissingClientAddress, match="is 1234"):
        resolve_key("ip", "g", _request(rf))


# -- user, user_or_ip ---------------------------------------------------------------


def _user(pk: int) -> User:
    user = User(pk=pk, username=f"u{pk}")
    return user


def test_user_key_is_the_primary_key(rf: RequestFactory) -> None:
    request = _request(rf)
    request.user = _user(42)
    assert resolve_key("user", "g", request) == "42"


def test_anonymous_user_gives_no_key(rf: RequestFactory) -> None:
    request = _request(rf)
    request.user = AnonymousUser()
    assert resolve_key("user", "g", request) is None


def test_no_user_attribute_gives_no_key(rf: RequestFactory) -> None:
    assert resolve_key("user", "g", _request(rf)) is None


def test_user_or_ip(rf: RequestFactory) -> None:
    request = _request(rf, "203.0.113.7")
    request.user = _user(7)
    assert resolve_key("user_or_ip", "g", request) == "user:7"
    request.user = AnonymousUser()
    assert resolve_key("user_or_ip", "g", request) == "ip:203.0.113.7"
    anonymous_no_ip = _request(rf, "")
    anonymous_no_ip.user = AnonymousUser()
    with pytest.raises(MissingClientAddress, match="REMOTE_ADDR is empty"):
        resolve_key("user_or_ip", "g", anonymous_no_ip)
    anonymous_no_ip.user = _user(7)  # a logged-in user needs no address
    assert resolve_key("user_or_ip", "g", anonymous_no_ip) == "user:7"


def test_user_and_ip_keys_cannot_collide(rf: RequestFactory) -> None:
    # A user whose pk looks like an address must not share a counter with that address.
    by_user = _request(rf, "10.0.0.1")
    by_user.user = _user(1)
    by_ip = _request(rf, "0.0.0.1")
    by_ip.user = AnonymousUser()
    assert resolve_key("user_or_ip", "g", by_user) != resolve_key("user_or_ip", "g", by_ip)


# -- header, get, post --------------------------------------------------------------


def test_header_key(rf: RequestFactory) -> None:
    request = rf.get("/", headers={"X-Api-Key": "secret-1"})
    assert resolve_key("header:x-api-key", "g", request) == "secret-1"
    assert resolve_key("header:X-API-KEY", "g", request) == "secret-1"
    assert resolve_key("header:X_Api_Key", "g", request) == "secret-1"


def test_missing_or_empty_header_gives_no_key(rf: RequestFactory) -> None:
    assert resolve_key("header:x-api-key", "g", rf.get("/")) is None
    assert resolve_key("header:x-api-key", "g", rf.get("/", HTTP_X_API_KEY="")) is None


def test_content_type_header_is_not_prefixed(rf: RequestFactory) -> None:
    request = rf.post("/", data="{}", content_type="application/json")
    assert resolve_key("header:Content-Type", "g", request) == "application/json"


@pytest.mark.parametrize(
    "value",
    [
        "caf\xe9",  # a latin-1 byte as WSGI hands it over
        "caf\xc3\xa9",  # UTF-8 bytes decoded as latin-1 (what WSGI does with UTF-8)
        "\xff\xfe\x80",
        "日本語",
    ],
)
def test_non_ascii_header_values(rf: RequestFactory, value: str) -> None:
    request = rf.get("/", HTTP_X_NAME=value)
    assert resolve_key("header:X-Name", "g", request) == value


def test_long_non_ascii_header_value_is_hashed(rf: RequestFactory) -> None:
    value = "\xe9" * 200  # 400 bytes in UTF-8
    request = rf.get("/", HTTP_X_NAME=value)
    expected = "sha256:" + hashlib.sha256(value.encode()).hexdigest()
    assert resolve_key("header:X-Name", "g", request) == expected


def test_get_key(rf: RequestFactory) -> None:
    assert resolve_key("get:q", "g", rf.get("/", {"q": "hello"})) == "hello"
    assert resolve_key("get:q", "g", rf.get("/", {"q": "né"})) == "né"
    assert resolve_key("get:q", "g", rf.get("/")) is None
    assert resolve_key("get:q", "g", rf.get("/?q=")) is None
    assert resolve_key("get:q", "g", rf.post("/?other=1", {"q": "x"})) is None


def test_post_key(rf: RequestFactory) -> None:
    assert resolve_key("post:email", "g", rf.post("/", {"email": "a@example.com"})) == (
        "a@example.com"
    )
    assert resolve_key("post:email", "g", rf.post("/", {})) is None
    assert resolve_key("post:email", "g", rf.post("/", {"email": ""})) is None
    assert resolve_key("post:email", "g", rf.get("/", {"email": "a@example.com"})) is None


# -- callables and dotted paths -----------------------------------------------------


def test_callable_key(rf: RequestFactory) -> None:
    assert compile_key(group_key) is group_key
    assert resolve_key(group_key, "login", rf.get("/")) == "login!"


def test_dotted_path_key(rf: RequestFactory) -> None:
    assert compile_key("tests.test_keys.tenant_key") is tenant_key
    assert resolve_key("tests.test_keys.tenant_key", "g", rf.get("/", {"tenant": "acme"})) == (
        "acme"
    )
    assert resolve_key("tests.test_keys.tenant_key", "g", rf.get("/")) is None


def test_non_string_key_values_are_stringified(rf: RequestFactory) -> None:
    assert resolve_key(int_key, "g", rf.get("/")) == "42"


def test_simple_keys_compile_to_functions() -> None:
    for spec in ("ip", "user", "user_or_ip", "header:X", "get:x", "post:x"):
        assert callable(compile_key(spec))


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "ipaddr",
        "IP",
        "cookie:session",
        "header:",
        "get:",
        "post:",
        ":name",
        "tests.test_keys.no_such_function",
        "no_such_module.key",
        "tests.test_keys.NOT_CALLABLE",
        None,
        42,
        b"ip",
    ],
)
def test_unknown_keys_raise_invalid_key(spec: Any) -> None:
    with pytest.raises(InvalidKey):
        compile_key(spec)


@pytest.mark.parametrize("spec", [["ip", "user"], {"key": "ip"}])
def test_unhashable_key_specs_raise_invalid_key(spec: Any) -> None:
    # A list in a RULE's "key" must be a dratelimit.E010 from the system check, not a crash.
    with pytest.raises(InvalidKey):
        compile_key(spec)


def test_invalid_key_is_improperly_configured_and_a_value_error() -> None:
    assert issubclass(InvalidKey, ImproperlyConfigured)
    assert issubclass(InvalidKey, ValueError)


def configuration_error_key(group: str, request: HttpRequest) -> str:
    raise ImproperlyConfigured("the key function's own configuration error")


def test_a_key_function_raising_improperly_configured_is_not_swallowed(
    rf: RequestFactory,
) -> None:
    with pytest.raises(ImproperlyConfigured, match="own configuration error"):
        resolve_key(configuration_error_key, "g", rf.get("/"))


def test_a_dotted_key_that_does_not_import_raises_on_the_request(rf: RequestFactory) -> None:
    with pytest.raises(InvalidKey, match="does not import"):
        resolve_key("tests.test_keys.defined_nowhere", "g", rf.get("/"))


def test_key_function_that_raises_is_logged_and_not_counted(
    rf: RequestFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="django_dratelimit"):
        assert resolve_key(broken_key, "login", rf.get("/")) is None
    [record] = [r for r in caplog.records if r.name == "django_dratelimit"]
    assert record.levelno == logging.ERROR
    assert "broken_key" in record.getMessage()
    assert "'login'" in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)


def test_key_function_errors_are_logged_once_per_interval(
    rf: RequestFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="django_dratelimit"):
        for _ in range(5):
            assert resolve_key("tests.test_keys.broken_key", "g", rf.get("/")) is None
    assert len([r for r in caplog.records if r.name == "django_dratelimit"]) == 1


# -- long keys ----------------------------------------------------------------------


def _sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


@pytest.mark.parametrize(
    "text",
    [
        "a" * MAX_KEY_BYTES,
        "é" * (MAX_KEY_BYTES // 2),  # two bytes each
        "€" * (MAX_KEY_BYTES // 3),  # three bytes each: 255 bytes
        "😀" * (MAX_KEY_BYTES // 4),  # four bytes each: exactly 256 bytes
        "short",
    ],
)
def test_keys_up_to_256_bytes_are_kept(text: str) -> None:
    assert normalize(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "a" * (MAX_KEY_BYTES + 1),
        "é" * (MAX_KEY_BYTES // 2 + 1),
        "€" * (MAX_KEY_BYTES // 3 + 1),
        "😀" * (MAX_KEY_BYTES // 4 + 1),
        "x" * 10_000,
    ],
)
def test_keys_over_256_bytes_are_hashed(text: str) -> None:
    hashed = normalize(text)
    assert hashed == _sha(text)
    assert hashed is not None
    assert len(hashed.encode()) <= MAX_KEY_BYTES


def test_hashing_is_stable_and_distinct() -> None:
    assert normalize("a" * 300) == normalize("a" * 300)
    assert normalize("a" * 300) != normalize("a" * 301)


def test_long_key_from_a_request(rf: RequestFactory) -> None:
    value = "k" * 1000
    assert resolve_key("get:q", "g", rf.get("/", {"q": value})) == _sha(value)
    assert resolve_key("get:q", "g", rf.get("/", {"q": "k" * 256})) == "k" * 256


def test_normalize_none_and_non_strings() -> None:
    assert normalize(None) is None
    assert normalize(5) == "5"


def test_an_empty_key_is_no_key() -> None:
    # A shared "" bucket would lump every request without a value together.
    assert normalize("") is None
