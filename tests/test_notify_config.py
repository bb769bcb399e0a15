"""The notification settings are checked at start: MQTT topic parts, Home Assistant ids, webhook
and broker URLs, the webhook's secret. Each bad value is one line naming the key, what was
expected and what was given (``serve`` exits 2)."""

from __future__ import annotations

import random
import re

import pytest

from conftest import error_line, run_cli
from streamrec.config import CameraConfig, ServeConfig
from streamrec.errors import StreamrecError
from streamrec.event_config import MqttConfig, NotifyConfig, WebhookConfig, check_mqtt_cameras
from streamrec.events.mqtt import discovery_config
from streamrec.notify_checks import ha_object_id
from streamrec.redact import printable
from streamrec.serve.heads import host_allowed
from streamrec.serve.core import AppCore
from streamrec.zones import ZoneConfig

MQTT = "mqtt://127.0.0.1:1883"


def refused(make, **kw) -> str:
    with pytest.raises(StreamrecError) as err:
        make(**kw)
    text = str(err.value)
    assert "\n" not in text
    return text


# -- MQTT topic parts -----------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["topic_prefix", "discovery_prefix"])
@pytest.mark.parametrize("value, why", [
    ("ha/#", "'#'"), ("#", "'#'"), ("home/+/x", "'+'"), ("a\x00b", "'\\x00'"), ("a\x01b", "'\\x01'"),
    ("tab\there", "'\\t'"), ("del\x7f", "'\\x7f'"), ("c1\x85", "'\\x85'"), ("bad\ud800", "'\\ud800'"), ("", "empty"),
    ("/", "empty"), ("///", "empty"), ("a\ufeffb", "'\\ufeff'"), ("\u200bha", "'\\u200b'"), ("a\u202eb", "'\\u202e'"), ("\u3164", "'\\u3164'"), ("ha\uffa0", "'\\uffa0'"),
    ("a\u2028b", "'\\u2028'"), ("a\ufffe", "'\\ufffe'"), ("a\ufdd0", "'\\ufdd0'"), ("x/+", "'+'"), ("#/x", "'#'"),
])
def test_a_topic_part_that_mqtt_cannot_publish_to_is_refused(key, value, why):
    text = refused(MqttConfig, url=MQTT, **{key: value})
    assert text == (f"[notify.mqtt] {key}: expected an MQTT topic (UTF-8 text without + or #, NUL or control "
                    f"characters), got {printable(repr(value))} ({why})")  # a Hangul filler escaped too


@pytest.mark.parametrize("key", ["topic_prefix", "discovery_prefix"])
@pytest.mark.parametrize("value", ["a//b", "/home//streamrec/", "a/b//"[:-1] + "/c"])
def test_a_topic_part_with_an_empty_level_inside_is_refused(key, value):
    assert refused(MqttConfig, url=MQTT, **{key: value}) == (
        f"[notify.mqtt] {key}: expected an MQTT topic without empty levels ('//'), got {value!r}")


@pytest.mark.parametrize("key", ["topic_prefix", "discovery_prefix"])
@pytest.mark.parametrize("value", ["$SYS", "/$share/x", "$"])
def test_a_topic_part_in_the_brokers_own_topics_is_refused(key, value):
    assert refused(MqttConfig, url=MQTT, **{key: value}) == (
        f"[notify.mqtt] {key}: expected an MQTT topic not starting with $ (the broker's own), got {value!r}")


@pytest.mark.parametrize("url, what, why", [
    ("mqtt://us%00er:pw@broker", "user name", "it holds '\\x00'"), ("mqtt://a%0Ab@broker", "user name", "it holds '\\n'"),
    ("mqtt://user:pw%00SECRET@broker", "password", "it holds '\\x00'"),
    ("mqtt://user:" + "p" * 70000 + "@broker", "password", "70000 bytes"),
    ("mqtt://SECRET" + "u" * 70000 + "@broker", "user name", "70006 bytes"),
])
def test_a_broker_user_name_or_password_mqtt_cannot_send_is_refused_without_showing_it(url, what, why):
    text = refused(MqttConfig, url=url)
    assert text == (f"[notify.mqtt] url: expected a {what} without NUL or control characters, of at most 65535 "
                    f"bytes as UTF-8, got one that is not ({why})")
    assert MqttConfig(url="mqtt://cam%20user:p%40ss@broker").host == "broker"


@pytest.mark.parametrize("url, what", [("mqtt://SECRET%FF@broker", "user name"), ("mqtt://u:SECRET%FF@broker", "password"),
                                       ("mqtt://user%3ASECRET%FF@broker", "user name")])
def test_a_broker_user_name_or_password_that_is_no_utf8_is_refused_without_showing_it(url, what):
    assert refused(MqttConfig, url=url) == (f"[notify.mqtt] url: expected a {what} of UTF-8 text (percent-encoded "
                                            f"bytes that decode as UTF-8), got one that does not")


@pytest.mark.parametrize("make", [WebhookConfig, MqttConfig])
@pytest.mark.parametrize("userinfo", ["u u:SECRET", "u\tu:SECRET", "u\xa0u:SECRET", "SECRET x"])
def test_a_blank_in_the_user_name_never_shows_the_password(make, userinfo):
    scheme = "http" if make is WebhookConfig else "mqtt"
    text = refused(make, url=f"{scheme}://{userinfo}@hooks.example/x", **({"secret": "k"} if make is WebhookConfig else {}))
    assert "SECRET" not in text and f"{scheme}://***@hooks.example" in text


@pytest.mark.parametrize("host", ["0x7f000001", "0X7F000001", "cam.0x1f", "0x", "4294967296", "a." * 130 + "com"])
def test_a_host_that_is_a_number_in_disguise_or_too_long_is_refused(host):
    for make, url in ((WebhookConfig, f"http://{host}/in"), (MqttConfig, f"mqtt://{host}")):
        text = refused(make, url=url, **({"secret": "k"} if make is WebhookConfig else {}))
        assert "with a host name of letters, digits" in text
    assert WebhookConfig(url="http://0xcafe.example/in", secret="k").url == "http://0xcafe.example/in"


@pytest.mark.parametrize("key", ["topic_prefix", "discovery_prefix"])
def test_a_topic_part_longer_than_mqtt_allows_is_refused(key):
    assert refused(MqttConfig, url=MQTT, **{key: "é" * 33_000}) == (
        f"[notify.mqtt] {key}: expected an MQTT topic of at most 65535 bytes as UTF-8, got 66000 bytes")
    # the longest topic built on it counts: a prefix that fits alone but not with its suffix is refused
    text = refused(MqttConfig, url=MQTT, **{key: "p" * 65_530})
    assert text.startswith(f"[notify.mqtt] {key}: expected an MQTT topic of at most 65535 bytes as UTF-8, got ")


@pytest.mark.parametrize("value", ["streamrec", "home/streamrec", "/leading/and/trailing/", "кухня/события", "a b"])
def test_valid_topic_parts_are_accepted(value):
    cfg = MqttConfig(url=MQTT, topic_prefix=value, discovery_prefix=value, homeassistant_discovery=True)
    assert cfg.topics("cam")[0] == f"{value.strip('/')}/cam/activity"


def test_a_camera_name_that_makes_a_topic_too_long_is_refused():
    cfg = MqttConfig(url=MQTT, topic_prefix="p" * 65_500)
    with pytest.raises(StreamrecError) as err:
        check_mqtt_cameras(cfg, ["rack-1", "c" * 40])
    assert str(err.value) == ("camera 'cccccccccccccccccccccccccccccccccccccccc': its MQTT topic: expected an MQTT topic "
                              "of at most 65535 bytes as UTF-8, got 65550 bytes")


# -- Home Assistant ids ---------------------------------------------------------------------------
def camera_names(n: int, seed: int = 7) -> list[str]:
    """``n`` distinct names a camera may have (letters of any alphabet, digits, ``-``, ``_``, ``.``),
    many of them differing only where an id cannot show it."""
    rng = random.Random(seed)
    alphabet = "aAbz09-_." + "кухняспорт" + "ÄÖüß" + "東京" + "ΔΣ" + "²"
    names = {"rack.1", "rack_1", "rack-1", "кухня", "спорт", "a.b", "a_b", "a..b", "a._b", "_", ".", "Rack.1"}
    while len(names) < n:
        names.add("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))))
    return sorted(names)


def test_home_assistant_ids_are_unique_per_camera_over_many_names():
    names = camera_names(5000)
    ids = {name: ha_object_id(name) for name in names}
    assert len(set(ids.values())) == len(names)  # no two cameras share an id
    for name, oid in ids.items():
        assert re.fullmatch(r"[A-Za-z0-9_-]+", oid), oid
        assert oid == ha_object_id(name)  # stable: the same sensor after a restart
        if re.fullmatch(r"[A-Za-z0-9_-]+", name):
            assert oid == name  # names Home Assistant takes as they are keep their id
        else:
            assert re.fullmatch(re.sub(r"[^A-Za-z0-9_-]", "_", name) + "_[0-9a-f]{8}", oid), oid
    configs = [discovery_config("streamrec", name) for name in names]
    assert len({c["unique_id"] for c in configs}) == len({c["device"]["identifiers"][0] for c in configs}) == len(names)


def test_names_that_slug_alike_are_distinct_sensors():
    for a, b in (("кухня", "спорт"), ("rack.1", "rack_1"), ("a.b", "a-b"), ("Rack", "rack"), ("café", "cafe\u0301"),
                 (" rack", "rack"), ("rack ", "rack"), ("rack 1", "rack_1"), ("rack 1", "rack-1"), ("rack-1", "rack_1"),
                 ("a" * 200, "a" * 199 + "b"), ("é" * 100, "é" * 99 + "è")):
        ca, cb = discovery_config("sr", a), discovery_config("sr", b)
        assert ca["unique_id"] != cb["unique_id"] and ca["device"]["identifiers"] != cb["device"]["identifiers"]
    assert discovery_config("sr", "rack.1")["unique_id"] == "streamrec_rack_1_83925fd7_activity"
    assert discovery_config("sr", "rack-1")["unique_id"] == "streamrec_rack-1_activity"


def serve_config(cameras: list[str], **mqtt) -> ServeConfig:
    return ServeConfig.from_sources({"cameras": [{"name": c, "source": "0"} for c in cameras],
                                     "notify": {"mqtt": {"url": MQTT, **mqtt}}}, {})


def test_cameras_whose_ids_would_still_collide_are_refused_at_start():
    other = "rack_1_" + ha_object_id("rack.1").rpartition("_")[2]  # a name that is another's id
    with pytest.raises(StreamrecError) as err:
        serve_config(["rack.1", other], homeassistant_discovery=True)
    assert str(err.value) == (f"[notify.mqtt] homeassistant_discovery: cameras 'rack.1' and {other!r} would share the "
                              f"Home Assistant id 'streamrec_{other}'; expected distinct ids, rename one")
    serve_config(["rack.1", other])  # no discovery: no ids to share
    serve_config(["кухня", "спорт", "rack.1", "rack_1"], homeassistant_discovery=True)


def test_ids_that_differ_in_case_alone_are_refused_across_cameras_and_zones():
    config = {"cameras": [{"name": "Gym__rack", "source": "0"},
                          {"name": "gym", "source": "0", "zones": [{"name": "rack", "x": 0, "y": 0, "w": 0.5, "h": 0.5}]}],
              "notify": {"mqtt": {"url": MQTT, "homeassistant_discovery": True}}}
    with pytest.raises(StreamrecError) as err:
        ServeConfig.from_sources(config, {})
    assert str(err.value) == ("[notify.mqtt] homeassistant_discovery: streams 'Gym__rack' and 'gym/rack' would share "
                              "the Home Assistant id 'streamrec_gym__rack'; expected distinct ids, rename one")
    config["notify"]["mqtt"]["homeassistant_discovery"] = False
    ServeConfig.from_sources(config, {})  # no discovery: no ids to share


# -- URLs and the secret --------------------------------------------------------------------------
@pytest.mark.parametrize("url, why", [
    ("http://hooks.example:0/in", "(port 0)"),
    ("http://hooks.example:70000/in", "(Port out of range 0-65535)"),
    ("https://hooks.example:http/in", "(Port could not be cast to integer value as 'http')"),
    ("http://:8080/in", None),
    ("https:///in", None),
    ("http://[::1]x/in", "(malformed IPv6 address)"),
    ("http://exa%20mple/in", "host name"),
    ("http://a$b/in", "host name"),
])
def test_webhook_urls_that_cannot_be_reached_are_refused(url, why):
    text = refused(WebhookConfig, url=url, secret="s")
    if why is None:
        assert text == f"[notify.webhook] url: expected an http:// or https:// URL with a host, got {url!r}"
    elif why == "(malformed IPv6 address)":
        assert text == f"[notify.webhook] url: expected an http:// or https:// URL with a host, got {url!r} {why}"
    elif why == "host name":
        assert text == (f"[notify.webhook] url: expected an http:// or https:// URL with a host name of letters, "
                        f"digits, '.', '-' or '_', got {url!r}")
    else:
        assert text == f"[notify.webhook] url: expected an http:// or https:// URL with a port 1-65535, got {url!r} {why}"


@pytest.mark.parametrize("url, why", [
    ("http://host:99999999999999999999/", "with a port 1-65535, got {url!r} (Port out of range 0-65535)"),
    ("http://[::1]:/", "with a port 1-65535, got {url!r} (empty port)"),
    ("http://hooks.example:/in", "with a port 1-65535, got {url!r} (empty port)"),
    ("http://[fe80::1%25eth0]/", "with a host, got {url!r} (an IPv6 zone such as %25eth0 is not supported)"),
    ("http://[fe80::1%25eth0]:8080/in", "with a host, got {url!r} (an IPv6 zone such as %25eth0 is not supported)"),
    ("http://hooks.example/in#frag", "without a #fragment, got {url!r}"),
    ("https://hooks.example/in?x=1#", "without a #fragment, got {url!r}"),
    ("http://hooks..example/in", "with a host name of letters, digits, '.', '-' or '_', got {url!r} "
                                 "(label empty or too long)"),
    ("http://" + "a" * 64 + ".example/in", "with a host name of letters, digits, '.', '-' or '_', got {url!r} "
                                           "(label empty or too long)"),
    ("http://999.1.1.1/in", "with a host name of letters, digits, '.', '-' or '_', got {url!r} (not an IPv4 address)"),
    ("http://user@/in", "with a host, got 'http://***@/in'"),  # a user alone may be a token: masked
    ("http://:80/", "with a host, got {url!r}"),
    ("ftp://", "with a host, got {url!r}"),
    ("http://[::1/x", ", got {url!r} (Invalid IPv6 URL)"),  # no port to speak of: a bracket without its pair
    ("http://::1]/x", ", got {url!r} (Invalid IPv6 URL)"),
    ("http://[zz]/in", ", got {url!r} ('zz' does not appear to be an IPv4 or IPv6 address)"),
    ("http://[v1.fe]/in", "with a host, got {url!r} (malformed IPv6 address)"),  # IPvFuture: no socket connects to it
])
def test_webhook_url_variants_that_cannot_be_used_are_refused(url, why):
    assert refused(WebhookConfig, url=url, secret="s") == (
        "[notify.webhook] url: expected an http:// or https:// URL" + ("" if why.startswith(",") else " ") + why.format(url=url))


@pytest.mark.parametrize("url", ["mqtt://broker:", "mqtt://[fe80::1%25eth0]", "mqtt://broker#x", "mqtt://b..r"])
def test_broker_url_variants_that_cannot_be_used_are_refused(url):
    assert refused(MqttConfig, url=url).startswith("[notify.mqtt] url: expected mqtt://HOST[:PORT] or mqtts://... ")


@pytest.mark.parametrize("url", ["mqtt://broker:0", "mqtt://broker:99999", "mqtts://broker:x", "mqtt://[::1", "mqtt://:1883",
                                 "mqtt://[v1.fe]"])
def test_broker_urls_that_cannot_be_reached_are_refused(url):
    assert refused(MqttConfig, url=url).startswith(("[notify.mqtt] url: expected mqtt://HOST[:PORT] or mqtts://... with a ",
                                                    f"[notify.mqtt] url: expected mqtt://HOST[:PORT] or mqtts://..., got {url!r}"))


@pytest.mark.parametrize("make, url", [(WebhookConfig, "http://bot:hunter2@hooks.example/in put"),
                                       (WebhookConfig, "http://bot:hunter2@hooks.example/in\x00"),
                                       (MqttConfig, "mqtt://cam:hunter2@broker\n:1883")])
def test_urls_with_blanks_or_control_characters_are_refused_without_the_password(make, url):
    kw = {"secret": "s"} if make is WebhookConfig else {}
    text = refused(make, url=url, **kw)
    assert "without blanks, backslashes, control or invisible characters" in text and "hunter2" not in text and "***" in text


def test_a_refused_url_never_shows_its_password():
    for make, url in ((WebhookConfig, "http://bot:hunter2@hooks.example:0/in"), (WebhookConfig, "ftp://u:hunter2@h"),
                      (MqttConfig, "mqtt://cam:hunter2@broker:99999"), (MqttConfig, "http://cam:hunter2@broker")):
        text = refused(make, url=url, **({"secret": "s"} if make is WebhookConfig else {}))
        assert "hunter2" not in text and "***" in text, text


def test_valid_urls_are_accepted():
    assert WebhookConfig(url="http://[::1]:8080/in", secret="s").url == "http://[::1]:8080/in"
    assert MqttConfig(url="mqtt://[::1]:1884").port == 1884
    assert WebhookConfig(url="https://кухня.example/in?a=1", secret="s").url  # looked up as IDNA
    assert WebhookConfig(url="http://10.0.0.7:8080/in", secret="s").url


@pytest.mark.parametrize("secret", ["", "   ", None, "\t\n", "\u3000", "\u200b", " \ufeff "])
def test_a_webhook_without_a_secret_is_refused_unless_sign_is_false(secret):
    assert refused(WebhookConfig, url="https://h/in", secret=secret) == " ".join(
        f"[notify.webhook] secret: expected a secret to sign with (or sign = false to send unsigned), got {secret!r}"
        .split())  # one line: runs of blanks as one
    assert WebhookConfig(url="https://h/in", secret=secret, sign=False).sign is False


def test_sign_false_with_a_secret_is_refused_without_showing_it():
    text = refused(WebhookConfig, url="https://h/in", secret="hunter2", sign=False)
    assert text == "[notify.webhook] secret: expected no secret with sign = false, got one"


def test_degraded_after_seconds_must_be_positive():
    assert NotifyConfig.from_dict({"degraded_after_seconds": 60}).degraded_after_seconds == 60.0
    assert refused(NotifyConfig.from_dict, d={"degraded_after_seconds": 0}) == (
        "[notify] degraded_after_seconds: expected > 0 seconds, got 0.0")


# -- through serve --------------------------------------------------------------------------------
@pytest.mark.parametrize("table, message", [
    ('[notify.mqtt]\nurl = "mqtt://127.0.0.1"\nhomeassistant_discovery = true\ndiscovery_prefix = "ha/#"\n',
     "[notify.mqtt] discovery_prefix: expected an MQTT topic"),
    ('[notify.mqtt]\nurl = "mqtt://127.0.0.1"\ntopic_prefix = "sr\\u0000x"\n', "[notify.mqtt] topic_prefix: expected an MQTT topic"),
    ('[notify.webhook]\nurl = "http://[::1/x"\nsecret = "s"\n', "[notify.webhook] url: expected an http:// or https:// URL"),
    ('[notify.webhook]\nurl = "http://127.0.0.1/x"\nsecret = ""\n', "[notify.webhook] secret: expected a secret"),
    ('[notify.webhook]\nurl = "http://127.0.0.1/x"\nsecret = "   "\n', "[notify.webhook] secret: expected a secret"),
    ('[notify.webhook]\nurl = "http://[::1]:/x"\nsecret = "s"\n', "(empty port)"),
    ('[notify.webhook]\nurl = "http://[fe80::1%25eth0]/"\nsecret = "s"\n', "(an IPv6 zone such as %25eth0"),
    ('[notify.webhook]\nurl = "http://host:99999999999999999999/"\nsecret = "s"\n', "with a port 1-65535"),
    ('[notify.webhook]\nurl = "http://127.0.0.1/x#top"\nsecret = "s"\n', "without a #fragment"),
    ('[notify.webhook]\nurl = " http://127.0.0.1/x"\nsecret = "s"\n', "without blanks, backslashes, control or invisible characters"),
    ('[notify.webhook]\nurl = "ftp://"\nsecret = "s"\n', "[notify.webhook] url: expected an http:// or https://"),
    ('[notify.mqtt]\nurl = "mqtt://127.0.0.1"\ntopic_prefix = "sr\\uFEFFx"\n', "('\\ufeff')"),
    ('[notify.mqtt]\nurl = "mqtt://127.0.0.1"\ntopic_prefix = "sr\\u007F"\n', "('\\x7f')"),
    ('[notify.mqtt]\nurl = "mqtt://127.0.0.1"\ndiscovery_prefix = "ha//x"\n', "without empty levels"),
    ('[notify.mqtt]\nurl = "mqtt://127.0.0.1"\ndiscovery_prefix = "ha/+/x/"\n', "got 'ha/+/x/' ('+')"),
    ('[[cameras]]\nname = "rack_1_83925fd7"\nsource = "1"\n[notify.mqtt]\nurl = "mqtt://127.0.0.1"\n'
     'homeassistant_discovery = true\n', "cameras 'rack.1' and 'rack_1_83925fd7' would share the Home Assistant id"),
])
def test_serve_stops_with_one_line_and_exit_2(tmp_path, table, message):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[cameras]]\nname = "rack.1"\nsource = "0"\n' + table)
    proc = run_cli("serve", "--config", str(cfg), "--weights", "none", "--port", "0", timeout=300)
    assert message in error_line(proc)


class Running(AppCore):
    """A running app's streams, as the camera and zones API checks them."""

    def __init__(self, config: ServeConfig, streams: list[str]) -> None:
        super().__init__(config, history=None)
        self.streams = streams

    def stream_keys(self) -> list[str]:
        return list(self.streams)


def test_a_camera_or_zones_added_at_run_time_may_not_take_another_streams_id():
    """The API refuses what a config would be refused for at start (and writes nothing)."""
    app = Running(serve_config(["gym", "gym__rack"], homeassistant_discovery=True), ["gym", "gym__rack"])
    with pytest.raises(StreamrecError) as err:  # PUT /api/cameras/gym/zones with a zone "rack"
        app.check_streams(CameraConfig("gym", "0", zones=(ZoneConfig("rack", 0, 0, 0.5, 0.5),)), replacing="gym")
    assert str(err.value) == ("[notify.mqtt] homeassistant_discovery: streams 'gym__rack' and 'gym/rack' would share "
                              "the Home Assistant id 'streamrec_gym__rack'; expected distinct ids, rename one")
    with pytest.raises(StreamrecError):  # POST /api/cameras of a camera "gym__mat" beside gym's zone "mat"
        Running(app.config, ["gym", "gym/mat"]).check_streams(CameraConfig("gym__mat", "0"))
    app.check_streams(CameraConfig("gym", "0", zones=(ZoneConfig("bench", 0, 0, 0.5, 0.5),)), replacing="gym")
    app.check_streams(CameraConfig("gym__rack", "0"), replacing="gym__rack")  # a camera keeps its own ids
    no_discovery = Running(serve_config(["gym", "gym__rack"]), ["gym", "gym__rack"])
    no_discovery.check_streams(CameraConfig("gym", "0", zones=(ZoneConfig("rack", 0, 0, 0.5, 0.5),)), replacing="gym")


def test_two_cameras_added_at_once_are_checked_against_each_other():
    """POST "Gate" and POST "gate" at the same time: each opens its source for seconds before it is
    running; the second's claim of its name is checked against the first's, in one step."""
    import threading

    from streamrec.live.camera import adding_camera

    app = Running(serve_config(["door"], homeassistant_discovery=True), ["door"])
    lock, adding = threading.RLock(), set()
    with adding_camera(lock, {"door"}, adding, "Gate",
                       check=lambda: app.check_streams(CameraConfig("Gate", "0"), pending=adding)):
        with pytest.raises(StreamrecError) as err:
            with adding_camera(lock, {"door"}, adding, "gate",
                               check=lambda: app.check_streams(CameraConfig("gate", "0"), pending=adding)):
                pass
        assert adding == {"Gate"}  # the refused one claimed nothing
    assert str(err.value) == ("camera 'gate': expected a name that differs from 'Gate' in more than case or Unicode "
                              "form (Home Assistant and many file systems read them as one)")
    assert adding == set()


@pytest.mark.parametrize("streams", [
    ["rack.1/z", "rack_1_83925fd7"],  # a camera whose zones are its only streams still has a device
    ["rack.1/z", "RACK_1_83925FD7"],  # Home Assistant lower-cases ids
    ["rack_1_83925fd7/a", "rack.1/b"],
])
def test_two_cameras_may_not_share_a_home_assistant_device(streams):
    mqtt = MqttConfig.from_dict({"url": "mqtt://127.0.0.1", "homeassistant_discovery": True})
    cameras = [s.split("/")[0] for s in streams]
    devices = {discovery_config("homeassistant", s)["device"]["identifiers"][0].lower() for s in streams}
    assert len(devices) == 1  # what Home Assistant would merge
    with pytest.raises(StreamrecError) as err:
        check_mqtt_cameras(mqtt, streams)
    assert str(err.value) == (f"[notify.mqtt] homeassistant_discovery: cameras {cameras[0]!r} and {cameras[1]!r} would "
                              f"share the Home Assistant device '{next(iter(devices))}'; expected distinct ids, rename one")
    check_mqtt_cameras(MqttConfig.from_dict({"url": "mqtt://127.0.0.1"}), streams)  # no discovery: no devices
    check_mqtt_cameras(mqtt, ["rack.1/z", "rack.1/y", "rack.1"])  # one camera's streams share its device


@pytest.mark.parametrize("url, why", [
    ("http://h/\u202e", "without blanks, backslashes, control or invisible characters, got 'http://h/\\u202e' ('\\u202e')"),
    ("http://h/\u200bx", "without blanks, backslashes, control or invisible characters, got 'http://h/\\u200bx' ('\\u200b')"),
    ("https://h:443\\@evil/in", "without blanks, backslashes, control or invisible characters"),
    ("http://0x7f.1/in", "with a host name of letters, digits, '.', '-' or '_', got 'http://0x7f.1/in' (not an IPv4 address)"),
    ("http://-h/in", "(a part of the name starts or ends with '-')"),
    ("http://hooks-.example/in", "(a part of the name starts or ends with '-')"),
])
def test_a_webhook_url_clients_would_read_differently_is_refused(url, why):
    with pytest.raises(StreamrecError) as err:
        WebhookConfig(url=url, secret="x")
    assert why in str(err.value) and "evil" not in str(err.value).split("got")[0]


@pytest.mark.parametrize("url, prefix, why", [
    ("mqtt://broker/path", "streamrec", "url: expected mqtt://HOST[:PORT] without a path or query"),
    ("mqtt://broker?x=1", "streamrec", "url: expected mqtt://HOST[:PORT] without a path or query"),
    ("mqtt://broker", " ", "topic_prefix: expected an MQTT topic (UTF-8 text without + or #, NUL or control characters), "
                           "got ' ' (blank)"),
    ("mqtt://broker", " / ", "topic_prefix: expected an MQTT topic (UTF-8 text without + or #, NUL or control characters), "
                             "got ' / ' (blank)"),
])
def test_an_mqtt_url_or_prefix_that_would_be_ignored_is_refused(url, prefix, why):
    with pytest.raises(StreamrecError) as err:
        MqttConfig(url=url, topic_prefix=prefix)
    assert str(err.value).startswith(f"[notify.mqtt] {why}")
    MqttConfig(url="mqtt://broker/", topic_prefix="gym/streamrec")


@pytest.mark.parametrize("entry", ["a:99999", "a:0", "*", "*.lan", "a b", "a..b", "1.2.3", "0x7f000001", ".lan", "a:b"])
def test_an_allowed_host_that_no_request_can_name_is_refused(entry):
    with pytest.raises(StreamrecError) as err:
        ServeConfig(source="0", allowed_hosts=(entry,))
    assert str(err.value) == ("allowed_hosts: expected host names (name or name:port, port 1-65535; a name of letters, "
                              f"digits, '-' or '_' parts joined by '.', or an IP address), got {entry!r}")


def test_an_international_allowed_host_matches_the_host_header_browsers_send():
    config = ServeConfig(source="0", host="0.0.0.0", token="t0ken", allowed_hosts=("кухня.local:8000", "Straße.de", "Cam.LAN."))
    assert config.allowed_hosts == ("xn--j1agri5c.local:8000", "xn--strae-oqa.de", "cam.lan")
    allowed = config.allowed_hosts
    assert host_allowed("xn--j1agri5c.local:8000", bound="0.0.0.0", port=9000, allowed=allowed)
    assert host_allowed("XN--STRAE-OQA.DE", bound="0.0.0.0", port=9000, allowed=allowed)
    assert not host_allowed("xn--j1agri5c.local:8001", bound="0.0.0.0", port=9000, allowed=allowed)


def test_an_ipv6_host_in_brackets_is_the_address():
    config = ServeConfig(source="0", host="[::1]")
    assert (config.host, config.is_loopback) == ("::1", True)


def test_a_topic_of_blanks_alone_is_refused_as_empty():
    for value in ("\u00a0", " / ", "\u3000"):
        assert refused(MqttConfig, url=MQTT, discovery_prefix=value).endswith(f"got {value!r} (blank)")


@pytest.mark.parametrize("make, url, where", [(WebhookConfig, "https://hooks.example/in", "[notify.webhook]"),
                                              (MqttConfig, "mqtts://broker.example", "[notify.mqtt]")])
@pytest.mark.parametrize("blank", ["", " "])
def test_a_blank_ca_file_is_refused_not_read_as_the_systems_cas(make, url, where, blank):
    kw = {"secret": "s"} if make is WebhookConfig else {}
    assert refused(make, url=url, ca_file=blank, **kw) == (
        f"{where} ca_file: expected a PEM file of CA certificates, got {blank!r}")


def test_an_international_host_is_looked_up_as_idna_2008_and_a_path_sent_percent_encoded():
    """``straße.de`` is ``xn--strae-oqa.de`` (IDNA 2008, as browsers read it), not ``strasse.de``
    (Python's IDNA 2003 codec): another host. A path or query that is not ASCII is sent as UTF-8
    percent-encoded, as a browser sends it (``http.client`` refused it, and the delivery was retried
    for a day)."""
    from servers import Receiver
    from streamrec.events.store import Notification
    from streamrec.events.webhook import WebhookSender

    NOTE = Notification(**NOTE_FIELDS)

    sender = WebhookSender(WebhookConfig.from_dict({"url": "https://straße.de/hook", "sign": False}))
    assert (sender.host, sender.headers(NOTE)["Host"]) == ("xn--strae-oqa.de", "xn--strae-oqa.de")
    receiver = Receiver()
    try:
        url = receiver.url.replace("/hook", "/hooks/café?tag=été&x=%C3%A9")
        assert WebhookSender(WebhookConfig.from_dict({"url": url, "sign": False})).send(NOTE) is None
        assert [r["path"] for r in receiver.requests] == ["/hooks/caf%C3%A9?tag=%C3%A9t%C3%A9&x=%C3%A9"]
    finally:
        receiver.close()


NOTE_FIELDS = dict(id=1, event_id="e1", kind="event_start", channel="webhook", payload='{"type": "event_start"}',
                   created=0.0, attempts=0)


@pytest.mark.parametrize("table, key", [("[notify.mqtt]\ntopic_prefix = 'gym'", "[notify.mqtt] url"),
                                        ("[notify.webhook]\nsecret = 's'", "[notify.webhook] url")])
def test_a_channel_without_its_url_is_one_line(tmp_path, table, key):
    from conftest import run_main

    cfg = tmp_path / "c.toml"
    cfg.write_text(f"source = 'a.mp4'\n{table}\n")
    assert error_line(run_main("serve", "--config", str(cfg))) == \
        f"streamrec: error: {key}: expected a value, got a table without it"


@pytest.mark.parametrize("make, why", [(lambda p: None, "a NUL character"), (lambda p: __import__("os").mkfifo(p), "a FIFO")])
def test_a_ca_file_that_is_no_file_is_refused_at_once(tmp_path, make, why):
    from streamrec.event_config import tls_context

    path = str(tmp_path / "ca.pem") + ("\0x" if why == "a NUL character" else "")
    make(path)
    with pytest.raises(StreamrecError) as err:  # a FIFO was read forever, a NUL was a ValueError's traceback
        tls_context(path, "[notify.webhook]")
    assert str(err.value) == f"[notify.webhook] ca_file: expected a PEM file of CA certificates, got {path!r} ({why})"


@pytest.mark.parametrize("prefix", [" streamrec", "streamrec ", "a/ /b", "gym/\u00a0", "a /b"])
def test_a_topic_level_with_a_space_at_either_end_is_refused(prefix):
    assert refused(MqttConfig, url="mqtt://127.0.0.1", topic_prefix=prefix) == (
        f"[notify.mqtt] topic_prefix: expected an MQTT topic whose levels neither start nor end with a space, got {prefix!r}")


@pytest.mark.parametrize("a, b", [("Gym", "gym"), ("\ud55c", "\u1112\u1161\u11ab"), ("\uff47ym", "gym")])
def test_camera_names_that_read_as_one_are_refused(a, b):
    with pytest.raises(StreamrecError) as err:
        ServeConfig(cameras=(CameraConfig(a, "0"), CameraConfig(b, "1")))
    assert str(err.value) == ("[[cameras]]: expected camera names that differ in more than case or Unicode form (Home "
                              f"Assistant and many file systems read them as one), got {a!r} and {b!r}")


def test_zone_names_that_read_as_one_are_refused():
    with pytest.raises(StreamrecError) as err:
        CameraConfig("gym", "0", zones=(ZoneConfig("Rack", 0, 0, 0.5, 0.5), ZoneConfig("rack", 0.5, 0, 0.5, 0.5)))
    assert str(err.value) == "camera 'gym': zones: expected names that differ in more than case, got 'Rack' and 'rack'"
