import json
import subprocess
import sys

import pytest
from torchvision.models import get_model_weights

from conftest import ROOT, run_main
from streamrec.models import kinetics


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


def test_labels_cli_json_and_text():
    proc = run_main("labels", "--sports", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == kinetics.sport_categories()
    proc = run_main("labels", "--group", "golf")
    assert proc.stdout.splitlines() == [f"{l}\tgolf" for l in kinetics.categories()["golf"]]
    proc = run_main("labels")
    assert len(proc.stdout.splitlines()) == 400


def test_labels_cli_finds_classes_by_text():
    proc = run_main("labels", "WREST")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["arm wrestling\tcombat sports", "wrestling\tcombat sports"]
    proc = run_main("labels", "basketball", "--json")
    assert json.loads(proc.stdout) == {"classes": ["dribbling basketball", "dunking basketball", "playing basketball",
                                                   "shooting basketball"],
                                       "groups": {"ball sports": ["dribbling basketball", "dunking basketball",
                                                                  "playing basketball", "shooting basketball"]}}
    proc = run_main("labels", "cooking", "--sports")
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", "streamrec: no such Kinetics-400 class or group contains 'cooking'\n")


def test_unknown_group_is_a_one_line_error():
    proc = run_main("labels", "--group", "quidditch")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "quidditch" in proc.stderr


def test_labels_text_matches_group_names_too():
    proc = run_main("labels", "gym")
    assert proc.returncode == 0, proc.stderr
    groups = kinetics.categories()
    assert len(groups["gym and fitness"]) == 18
    by_group = [f"{x}\t{g}" for g, labels in groups.items() if "gym" in g for x in labels]  # gym and fitness, gymnastics
    by_label = [f"{x}\t{g}" for g, labels in groups.items() if "gym" not in g for x in labels if "gym" in x]
    assert by_group and sorted(proc.stdout.splitlines()) == sorted(by_group + by_label)


def test_labels_answers_without_importing_torch():
    """The class list is shipped data: listing it does not wait seconds for torch to import."""
    code = ("import sys; from streamrec.cli.main import main; rc = main(['labels', 'golf']); "
            "print(rc, 'torch' in sys.modules, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.stderr.splitlines()[-1] == "0 False", proc.stderr
    assert proc.stdout.splitlines() == [f"{label}\tgolf" for label in kinetics.categories()["golf"]]
