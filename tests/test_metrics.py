"""``/metrics`` and cameras removed at run time: a removed camera's series go, and a scrape under
way when it is removed does not bring them back (the scrape runs on the server's loop, the
removal in an API thread)."""

from __future__ import annotations

import threading

from streamrec.live.labels import LabelStats
from streamrec.serve.hub import Hub
from streamrec.serve.metrics import Metrics


def series_of(text: str, camera: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("#") and f'camera="{camera}"' in line]


def test_a_camera_removed_during_a_scrape_leaves_no_series():
    cameras = {"gate": ({"capture_fps": 25.0}, {None: LabelStats()}), "door": ({"capture_fps": 10.0}, {None: LabelStats()})}
    metrics: Metrics | None = None
    removal: list[threading.Thread] = []

    def rows():
        snapshot = [(n, s, labelled) for n, (s, labelled) in list(cameras.items())]
        if not removal:  # DELETE /api/cameras/gate lands while the scrape has its rows
            def remove() -> None:
                cameras.pop("gate")
                metrics.forget("gate")

            removal.append(threading.Thread(target=remove))
            removal[0].start()
            removal[0].join(0.5)  # it waits for the scrape, or is done already
        return snapshot

    metrics = Metrics(Hub(), rows)
    first = metrics.render().decode()
    removal[0].join(10)
    assert series_of(first, "gate")  # the scrape's rows had it
    after = metrics.render().decode()
    assert series_of(after, "gate") == [] and series_of(after, "door")
