import json

import pytest
from torchvision.models import get_model_weights

from streamrec.models import kinetics

from conftest import run_cli


def test_every_grouped_name_is_a_torchvision_category_and_each_class_has_one_group():
    official = list(get_model_weights("r2plus1d_18").DEFAULT.meta["categories"])
    assert kinetics.classes() == official
    seen: dict[str, str] = {}
    for group, labels in kinetics.categories().items():
        for label in labels:
            assert label in official, f"{label!r} in group {group!r} is not a Kinetics-400 class"
            assert label not in seen, f"{label!r} is in both {seen[label]!r} and {group!r}"
            seen[label] = group
    assert sorted(seen) == sorted(official)


def test_sport_groups():
    sports = kinetics.sport_categories()
    assert sum(len(v) for v in sports.values()) == 134
    for g in ["ball sports", "athletics", "gymnastics", "swimming and diving", "water sports", "winter sports",
              "racquet and bat sports", "combat sports", "golf", "cycling", "climbing", "gym and fitness", "dance"]:
        assert g in sports, g
    assert "playing tennis" in sports["racquet and bat sports"]
    assert kinetics.group_of("dining") == "food and drink"


@pytest.mark.slow
def test_labels_cli_json_and_text():
    proc = run_cli("labels", "--sports", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == kinetics.sport_categories()
    proc = run_cli("labels", "--group", "golf")
    assert proc.stdout.splitlines() == [f"{l}\tgolf" for l in kinetics.categories()["golf"]]
    proc = run_cli("labels")
    assert len(proc.stdout.splitlines()) == 400


@pytest.mark.slow
def test_labels_cli_finds_classes_by_text():
    proc = run_cli("labels", "WREST")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["arm wrestling\tcombat sports", "wrestling\tcombat sports"]
    proc = run_cli("labels", "basketball", "--json")
    assert json.loads(proc.stdout) == {"classes": ["dribbling basketball", "dunking basketball", "playing basketball",
                                                   "shooting basketball"],
                                       "groups": {"ball sports": ["dribbling basketball", "dunking basketball",
                                                                  "playing basketball", "shooting basketball"]}}
    proc = run_cli("labels", "cooking", "--sports")
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", "streamrec: no such Kinetics-400 class or group contains 'cooking'\n")


def test_unknown_group_is_a_one_line_error():
    proc = run_cli("labels", "--group", "quidditch")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "quidditch" in proc.stderr


@pytest.mark.slow
def test_labels_text_matches_group_names_too():
    proc = run_cli("labels", "gym")
    assert proc.returncode == 0, proc.stderr
    groups = kinetics.categories()
    assert len(groups["gym and fitness"]) == 18
    by_group = [f"{x}\t{g}" for g, labels in groups.items() if "gym" in g for x in labels]  # gym and fitness, gymnastics
    by_label = [f"{x}\t{g}" for g, labels in groups.items() if "gym" not in g for x in labels if "gym" in x]
    assert by_group and sorted(proc.stdout.splitlines()) == sorted(by_group + by_label)
