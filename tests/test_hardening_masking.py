"""Credentials in source URLs are masked wherever a URL is shown (logs, /healthz, the page,
status messages all go through :func:`streamrec.live.sources.mask_credentials`)."""

from __future__ import annotations

import pytest

from streamrec.live.sources import SECRET_QUERY_KEYS, SourceSpec, mask_credentials

CASES = [
    # the password ends at the LAST @ before the host
    ("rtsp://admin:hunter2@10.0.0.5/stream1", "rtsp://admin:***@10.0.0.5/stream1"),
    ("rtsp://admin:p@ss@cam.lan:554/live", "rtsp://admin:***@cam.lan:554/live"),
    ("rtsp://admin:a@b@c@cam/x", "rtsp://admin:***@cam/x"),
    ("rtsp://u:pa/ss@cam/x", "rtsp://u:***@cam/x"),
    ("rtsp://u:p@ss/w0rd@cam:554/live?channel=1", "rtsp://u:***@cam:554/live?channel=1"),
    ("rtsp://u:p?ss@cam/x", "rtsp://u:***@cam/x"),
    ("rtsp://u:p#ss@cam:554", "rtsp://u:***@cam:554"),
    ("rtsps://u:@cam/x", "rtsps://u:***@cam/x"),
    # secrets in the query string
    ("rtsp://cam/live?authtoken=abc123", "rtsp://cam/live?authtoken=***"),
    ("http://cam:8080/video?channel=2&password=pw&token=t", "http://cam:8080/video?channel=2&password=***&token=***"),
    ("https://h/s?key=K&secret=S&access_token=A&api_key=P", "https://h/s?key=***&secret=***&access_token=***&api_key=***"),
    ("https://h/s?AuthToken=abc;Password=p#frag", "https://h/s?AuthToken=***;Password=***#frag"),
    ("https://h/s?api%5Fkey=K&keyframe=1", "https://h/s?api%5Fkey=***&keyframe=1"),
    ("rtsp://u:p@ss@cam/live?authtoken=x&x=1", "rtsp://u:***@cam/live?authtoken=***&x=1"),
    # user information without a password: a token may be the user; a user with an encoded ":"
    ("rtsp://admin@cam/x", "rtsp://***@cam/x"),
    ("https://ghp_T0KEN@git.example/repo", "https://***@git.example/repo"),
    ("rtsp://admin%3As3cret@cam/x", "rtsp://***@cam/x"),
    ("rtsp://admin%3As3cret:pw@cam/x", "rtsp://***:***@cam/x"),
    ("postgresql://streamrec@db.lan/gym", "postgresql://streamrec@db.lan/gym"),  # a role: the server's errors name it
    # IP cameras' password keys, a key with a space or an encoded "=", in other forms of its letters
    ("http://cam/v.cgi?user=admin&pw=P1&psw=P2&loginuse=admin&loginpas=P3",
     "http://cam/v.cgi?user=admin&pw=***&psw=***&loginuse=admin&loginpas=***"),
    ("http://cam/v?pin=1234&otp=9&sid=S&ticket=T&hmac=H&hash=X", "http://cam/v?pin=***&otp=***&sid=***&ticket=***&hmac=***&hash=***"),
    ("http://cam/v?Token =abc&token%3Dxyz&t=1", "http://cam/v?Token =***&token%3D***&t=1"),
    ("http://cam/v?\uff54\uff4f\uff4b\uff45\uff4e=abc&to\u200bken=xyz", "http://cam/v?\uff54\uff4f\uff4b\uff45\uff4e=***&to\u200bken=***"),
    # a value runs over a "?" that no key= follows
    ("http://cam/v?token=SEKa?SEKb", "http://cam/v?token=***"),
    ("http://cam/v?token=abc?", "http://cam/v?token=***?"),
    # nothing secret: unchanged
    ("rtsp://cam:554/live@main", "rtsp://cam:554/live@main"),
    ("rtsp://cam/live@main", "rtsp://cam/live@main"),
    ("http://cam/x?email=a@b.example&channel=1", "http://cam/x?email=a@b.example&channel=1"),
    ("clips/a.mp4", "clips/a.mp4"),
    # inside messages, several URLs, quoted
    ("cannot connect to rtsp://a:b@c@h/x: Connection refused", "cannot connect to rtsp://a:***@h/x: Connection refused"),
    ("got 'rtsp://a:p@w@h/x?token=t' and http://c:d@e/?key=k",
     "got 'rtsp://a:***@h/x?token=***' and http://c:***@e/?key=***"),
]


@pytest.mark.parametrize("url, masked", CASES)
def test_masking(url, masked):
    assert mask_credentials(url) == masked
    assert mask_credentials(masked) == masked  # idempotent


def test_the_secret_query_keys():
    assert {"authtoken", "password", "token", "key", "secret", "access_token", "api_key"} <= SECRET_QUERY_KEYS


def test_the_display_name_of_a_source_is_masked():
    spec = SourceSpec.parse("rtsp://admin:p@ss@10.0.0.5:554/h264?authtoken=XYZ")
    assert spec.display_name == "rtsp://admin:***@10.0.0.5:554/h264?authtoken=***"


def test_error_messages_that_quote_a_source_mask_it():
    from streamrec.config import ServeConfig
    from streamrec.errors import SourceError, StreamrecError

    with pytest.raises(SourceError) as info:
        SourceSpec.parse("ftp://cam:p@ss@h/x?token=T")
    assert str(info.value) == "--source: expected rtsp://, rtsps://, http:// or https://, got 'ftp://cam:***@h/x?token=***'"
    for cameras, expected in (
        ([{"source": "rtsp://u:p@ss@h/x?token=T"}], "each camera needs a name and a source, got a table of 'source'"),
        ([{"name": "gym", "url": "rtsp://cam/x", "password": "SECRET1"}],  # a table's values are never shown
         "each camera needs a name and a source, got a table of 'name', 'url', 'password'"),
        ([[{"name": "gym", "password": "SECRET1"}]], "expected a table with a name and a source, got a list of 1 item"),
        (["rtsp://u:pw@h/x"], "expected a table with a name and a source, got 'rtsp://u:***@h/x'"),
    ):
        with pytest.raises(StreamrecError) as info:
            ServeConfig.from_sources({"cameras": cameras}, {})
        assert str(info.value) == f"[[cameras]]: {expected}"


@pytest.mark.parametrize("url, quoted", [
    ("postgresql://u:se cret@127.0.0.1:1/db", "unexpected spaces"),
    ("postgresql://u:secret@[::1/db", "IPv6"),
    ("postgresql://u:sec%ZZret@127.0.0.1:1/db", "percent-encoded"),
])
def test_a_database_error_that_quotes_the_url_hides_the_password(url, quoted):
    pytest.importorskip("psycopg")
    from streamrec.errors import StreamrecError
    from streamrec.live.history import HistoryStore

    with pytest.raises(StreamrecError) as info:
        HistoryStore(url)
    assert quoted in str(info.value) and "cret" not in str(info.value) and "u:***@" in str(info.value)


def test_a_webhook_error_that_quotes_the_password_hides_it():
    from streamrec.event_config import WebhookConfig
    from streamrec.events.webhook import WebhookSender

    sender = WebhookSender(WebhookConfig.from_dict({"url": "http://hook:hunter22@127.0.0.1:1/in?token=tok123", "sign": False}))
    shown = sender.unreachable(OSError("bad auth 'hunter22' and tok123\nnext"))
    assert shown == "cannot reach the webhook: bad auth '***' and ***\\nnext"


def test_hiding_a_quoted_password_is_quick_for_a_long_url():
    import time

    from streamrec.redact import mask_quoted

    url = "rtsp://admin:hunter2@cam/" + "ab/" * 7000 + "?token=tok123&" + "k=v&" * 3000
    start = time.perf_counter()
    shown = mask_quoted(f"cannot open {url}: 'hunter2' and tok123 refused", url)
    assert time.perf_counter() - start < 1.0
    assert "hunter2" not in shown and "tok123" not in shown and shown.endswith(": '***' and *** refused")


@pytest.mark.parametrize("text", ["rtsp://a:b\n" * 12000, "x=rtsp://" * 12000 + "@h", "rtsp://u:p@h/?token=a=rtsp://" * 4000])
def test_masking_a_long_text_of_many_urls_is_quick(text):
    import time

    start = time.perf_counter()
    mask_credentials(text)
    assert time.perf_counter() - start < 1.0  # every log line is masked
