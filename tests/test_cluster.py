"""Beyond one machine: a local Ray cluster (a head and two worker nodes) runs capture
actors for several cameras and a batched inference actor; labels arrive for every camera."""

from __future__ import annotations


import pytest

from streamrec.config import ServeConfig
from streamrec.messages import validate_prediction

from conftest import all_clips

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(2):
        c.add_node(num_cpus=2)
    c.wait_for_nodes()
    ray.init(address=c.address, logging_level="WARNING")
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def test_labels_arrive_for_every_camera_across_two_workers(cluster, clips):
    from streamrec.distributed import ClusterRunner

    names = all_clips()[:4]
    cams = [{"name": f"cam{i}", "source": str(clips / n), "loop": True} for i, n in enumerate(names)]
    config = ServeConfig.from_sources({"cameras": cams, "model": "tiny3d", "weights": "none", "device": "cpu"}, {})
    got: dict[str, list] = {}
    runner = ClusterRunner(config, lambda name, msg: got.setdefault(name, []).append(msg))
    try:
        batches = []
        for _ in range(400):
            batches.append(runner.step())
            if all(len(got.get(c["name"], [])) >= 3 for c in cams):
                break
        stats = runner.stats()
    finally:
        runner.close()
    assert set(got) == {c["name"] for c in cams}
    for name, msgs in got.items():
        for m in msgs:
            validate_prediction(m)
            assert m["camera"] == name
        assert [m["seq"] for m in msgs] == list(range(1, len(msgs) + 1))
    assert max(batches) > 1  # windows of several cameras went through one call
    nodes = {s["node"] for s in stats.values()}
    assert len(nodes) == 2, stats  # capture actors spread over both worker nodes
    assert all(s["state"] == "running" for s in stats.values())
