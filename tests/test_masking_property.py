"""Secrets in URLs never reach what is shown, whatever characters they hold: passwords (with
spaces, quotes, ``@``, ``/``, ``?``, ``#`` and ``%``) and the values of secret parameters in the
query, ``;`` parameters and the fragment, inside longer text; the host stays visible."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from streamrec.redact import mask_credentials, secret_key

# printable characters but "*", the mask itself
SECRETS = st.text(alphabet=[c for c in string.printable if c.isprintable() and c != "*"], min_size=4, max_size=24)
HOSTS = st.sampled_from(["cam.example", "10.0.0.5", "[fe80::1]", "cam-1", "localhost"])
AFTER_HOST = st.sampled_from(["", "/", ":554", ":554/live", "/stream1", "/live%40main", ":8554/h264?channel=1"])
KEYS = st.sampled_from(["token", "api-key", "x-api-key", "X-Api-Key", "private_token", "access-token", "Password",
                        "sig", "API%5FKEY", "client_secret", "sessionid", "authToken", "credentials", "pwd"])
SEPARATORS = st.sampled_from(["?", "?channel=1&", "?a=1;", ";", "#", "?a=b#"])
BEFORE = st.sampled_from(["", "cannot connect to ", "got '", 'source="', "(", "[[cameras]]: got {'source': '"])
AFTER = st.sampled_from(["", ": Connection refused", "' and more", '"', ")", " retrying in 2 s", "'}"])
# the one shape that reads both ways: "rtsp://admin:554/x@cam" is a password "554/x" or, like
# "rtsp://cam:554/live@main", a port and a path
AMBIGUOUS = re.compile(r"^\d{1,5}/")
SCHEMES = st.sampled_from(["rtsp", "rtsps", "http", "https", "mqtts", "postgresql"])


@settings(max_examples=400, suppress_health_check=list(HealthCheck), deadline=None)
@given(password=SECRETS, scheme=SCHEMES, host=HOSTS, after_host=AFTER_HOST, before=BEFORE, after=AFTER)
def test_a_password_never_shows(password, scheme, host, after_host, before, after):
    text = f"{before}{scheme}://admin:{password}@{host}{after_host}{after}"
    assume(password not in f"{before}{scheme}://admin:***@{host}{after_host}{after}" and not AMBIGUOUS.search(password))
    masked = mask_credentials(text)
    assert password not in masked
    assert f"{scheme}://admin:***@" in masked and host in masked
    assert password not in mask_credentials(masked) and host in mask_credentials(masked)  # masked twice: the same promise


@settings(max_examples=400, suppress_health_check=list(HealthCheck), deadline=None)
@given(password=SECRETS, value=SECRETS, key=KEYS, separator=SEPARATORS, host=HOSTS, after_host=AFTER_HOST,
       before=BEFORE, after=AFTER)
@pytest.mark.slow
def test_a_secret_parameter_never_shows(password, value, key, separator, host, after_host, before, after):
    text = f"{before}rtsp://admin:{password}@{host}{after_host}{separator}{key}={value}{after}"
    shown = f"{before}rtsp://admin:***@{host}{after_host}{separator}{key}=***{after}"
    assume(password not in shown and value not in shown and password not in value and value not in password)
    assume(not AMBIGUOUS.search(password))
    masked = mask_credentials(text)
    assert password not in masked and value not in masked
    assert "rtsp://admin:***@" in masked and host in masked


@settings(max_examples=200, suppress_health_check=list(HealthCheck), deadline=None)
@given(value=SECRETS, key=KEYS, separator=SEPARATORS, before=BEFORE, after=AFTER)
def test_a_secret_parameter_without_user_information_never_shows(value, key, separator, before, after):
    text = f"{before}https://hooks.example:8443/in{separator}{key}={value}{after}"
    assume(value not in f"{before}https://hooks.example:8443/in{separator}{key}=***{after}")
    masked = mask_credentials(text)
    assert value not in masked and "https://hooks.example:8443/in" in masked


@pytest.mark.parametrize("url, masked", [
    ("rtsp://admin:pa ss@host/", "rtsp://admin:***@host/"),
    ('rtsp://admin:pa"ss@host/', "rtsp://admin:***@host/"),
    ("rtsp://admin:pa'ss@host:554/live", "rtsp://admin:***@host:554/live"),
    ("cannot open rtsp://u:a b@c d@cam.lan:554/x: timed out", "cannot open rtsp://u:***@cam.lan:554/x: timed out"),
    ("rtsp://u:100%@cam/x", "rtsp://u:***@cam/x"),
    ("http://h/x?api-key=K&x-api-key=L&private_token=M&access-token=N&keyframe=1",
     "http://h/x?api-key=***&x-api-key=***&private_token=***&access-token=***&keyframe=1"),
    ("rtsp://cam/live;token=abc", "rtsp://cam/live;token=***"),
    ("rtsp://cam/live;jsessionid=abc?channel=1", "rtsp://cam/live;jsessionid=***?channel=1"),
    ("https://app.example/cb#access_token=abc&state=1", "https://app.example/cb#access_token=***&state=1"),
    ("http://h/x?Api%2DKey=K&%74oken=T", "http://h/x?Api%2DKey=***&%74oken=***"),
    ("http://h/x?SIG=a&X-Goog-Credential=b&signal=1&design=2", "http://h/x?SIG=***&X-Goog-Credential=***&signal=1&design=2"),
    ("http://h/x?token=a b&secret=c", "http://h/x?token=*** b&secret=***"),
    ("http://h/x?token=&channel=1", "http://h/x?token=***"),
    ("see 'http://h/x?token=abc' and", "see 'http://h/x?token=***' and"),
    # a message wrapped inside the password or user name: the next line's word is the URL's
    ("error: rtsp://admin:hunt\ner2@10.0.0.5/x", "error: rtsp://admin:***@10.0.0.5/x"),
    ("rtsp://adm\r\n  in:hunter2@cam:554/x: refused", "rtsp://admin:***@cam:554/x: refused"),
    ("open http://cam.local:8080\nuser@example.com wrote", "open http://cam.local:8080\nuser@example.com wrote"),
    ("rtsp://a:b@c/x\nrtsp://d:e@f/y", "rtsp://a:***@c/x\nrtsp://d:***@f/y"),
    # an "@" in the path after a host and port is the path's
    ("rtsp://admin:pw@cam:554/live@main", "rtsp://admin:***@cam:554/live@main"),
    ("rtsp://u:p@ss/1@host", "rtsp://u:***@host"),
    ("http://h/x?monkey=1&donkeys=2&turkey_key=3", "http://h/x?monkey=1&donkeys=2&turkey_key=***"),
])
def test_more_masking(url, masked):
    assert mask_credentials(url) == masked
    assert mask_credentials(masked) == masked


@pytest.mark.parametrize("key", ["token", "TOKEN", "Access-Token", "x_api_key", "apiKey", "privateKey", "key2",
                                 "passphrase", "PWD", "authorization", "hmac_sig", "X-Amz-Signature", "session_id",
                                 "Credential", "api%5fkey", "api%255Fkey", "secret.value", "jwt",
                                 "Authorisation", "oauth_token", "sslpassword", "PASS", "bypass_token"])
def test_secret_keys(key):
    assert secret_key(key)


@pytest.mark.parametrize("key", ["channel", "keyframe", "signal", "design", "subtype", "email", "stream", "profile",
                                 "monkey", "Hockey", "turkeys", "author", "authority", "passenger", "compass",
                                 "bypass", "passthrough"])
def test_keys_that_are_not_secret(key):
    assert not secret_key(key)
