"""What streamrec publishes over MQTT besides events: each labelled stream's activity state and
its Home Assistant discovery config (see :mod:`streamrec.events.mqtt` for the topics).

Example:
    >>> cfg = discovery_config("streamrec", "rack.1")
    >>> cfg["state_topic"], cfg["unique_id"]
    ('streamrec/rack.1/activity', 'streamrec_rack_1_83925fd7_activity')
    >>> activity_payload("gym", "squat", 0.91234, 1700000000.0, False)
    '{"camera": "gym", "zone": null, "label": "squat", "score": 0.9123, "ts": 1700000000.0, "uncertain": false}'
"""

from __future__ import annotations

import json
import math
from typing import Any

from streamrec.notify_checks import ha_object_id, ha_stream_id
from streamrec.zones import split_key


def object_id(camera: str) -> str:
    """``camera`` as Home Assistant's ids take it, distinct for distinct names (:func:`ha_object_id`)."""
    return ha_object_id(camera)


def discovery_config(prefix: str, key: str) -> dict[str, Any]:
    """Home Assistant's MQTT discovery config of a labelled stream's activity sensor (``key``:
    ``camera``, or ``camera/zone``: a sensor named "<zone> activity" on the camera's device)."""
    camera, zone = split_key(key)
    state = f"{prefix}/{key}/activity"
    return {"name": "Activity" if zone is None else f"{zone} activity", "state_topic": state, "value_template": "{{ value_json.label }}",
            "json_attributes_topic": state, "availability_topic": f"{prefix}/availability",
            "payload_available": "online", "payload_not_available": "offline", "icon": "mdi:run",
            "unique_id": f"streamrec_{ha_stream_id(key)}_activity",
            "device": {"identifiers": [f"streamrec_{object_id(camera)}"], "name": f"streamrec {camera}",
                       "manufacturer": "streamrec"}}


def activity_payload(camera: str, label: str, score: float, ts: float, uncertain: bool,
                     random_weights: bool = False, zone: str | None = None) -> str:
    """The activity state JSON; ``"random_weights": true`` when the model has random weights
    (``--weights none``), whose labels are meaningless."""
    score_out = round(float(score), 4) if math.isfinite(score) else None
    payload = {"camera": camera, "zone": zone, "label": label, "score": score_out, "ts": ts if math.isfinite(ts) else None,
               "uncertain": bool(uncertain)}
    if random_weights:
        payload["random_weights"] = True
    return json.dumps(payload, allow_nan=False)
