"""Optional dependencies (``[project.optional-dependencies]``): a feature whose library is not
installed is refused at once, before any work, with one line naming the option and the
install command that works from the clone; the rest of streamrec runs without them.

A library is made missing in this process by ``sys.modules[name] = None`` (what
``importlib.util.find_spec`` and ``import`` then read as not installed)."""

from __future__ import annotations

import sys
import tomllib

import pytest

from conftest import ROOT, error_line, run_main, write_video
from streamrec.errors import StreamrecError
from streamrec.event_config import MqttConfig, NotifyConfig, RecordingConfig, WebhookConfig
from streamrec.events.manager import EventManager
from streamrec.supervision import Supervisor

EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
DEPENDENCIES = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def names(requirements: list[str]) -> set[str]:
    return {r.split(">")[0].split("=")[0].split("[")[0].strip().lower() for r in requirements}


def test_heavy_single_feature_libraries_are_extras_and_the_tests_install_them():
    assert not names(DEPENDENCIES) & {"openvino", "matplotlib", "paho-mqtt", "nncf"}
    assert names(EXTRAS["openvino"]) == {"openvino"} and names(EXTRAS["mqtt"]) == {"paho-mqtt"}
    assert names(EXTRAS["plot"]) == {"matplotlib"} and {"openvino", "nncf"} <= names(EXTRAS["int8"])
    every = set().union(*(names(v) for k, v in EXTRAS.items() if k != "test"))
    assert every <= names(EXTRAS["test"])  # the suite runs every feature


@pytest.mark.parametrize("option", ["--plot", "--sheet"])
def test_a_figure_without_matplotlib_is_one_line_before_any_work(tmp_path, monkeypatch, option):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    clip = tmp_path / "clip.mp4"
    write_video(clip, seconds=0.5)
    out = tmp_path / "figures" / "figure.png"  # beside the data, not in it
    out.parent.mkdir()
    args = (["classify", str(clip), "--weights", "none", "--plot", str(out)] if option == "--plot"
            else ["dataset", str(tmp_path / "data"), "--sheet", str(out)])
    line = error_line(run_main(*args))
    assert line.startswith(f"streamrec: error: {option}: matplotlib is not installed; pip install -e ")
    assert line.endswith("[plot]'") and not out.exists()


def test_mqtt_without_paho_is_one_line_naming_the_table_when_the_config_is_read(monkeypatch):
    monkeypatch.setitem(sys.modules, "paho", None)
    with pytest.raises(StreamrecError) as err:
        MqttConfig("mqtt://127.0.0.1:1883")
    assert str(err.value).startswith("[notify.mqtt]: paho is not installed; pip install -e ")
    assert str(err.value).endswith("[mqtt]'")


def test_a_webhook_alone_needs_no_paho(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "paho" or m.startswith(("paho.", "streamrec.events.mqtt", "streamrec.events.notify"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "paho", None)  # import paho.mqtt... now fails as without it
    hook = WebhookConfig("http://127.0.0.1:1/hook", sign=False)
    events = EventManager(rules=(), notify=NotifyConfig(webhook=hook), recording=RecordingConfig(enabled=False),
                          db=str(tmp_path / "h.db"), classes=["a"], supervisor=Supervisor(), publish=lambda m: None)
    try:
        assert events.notifier is not None and events.notifier.mqtt is None
    finally:
        events.close()


def test_without_openvino_auto_picks_among_the_backends_that_are_installed(monkeypatch):
    from streamrec.runtime.backends import available

    monkeypatch.setitem(sys.modules, "openvino", None)
    assert "openvino" not in available() and {"torch", "torchscript"} <= set(available())
