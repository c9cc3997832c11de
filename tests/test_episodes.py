"""Few-shot episodes: the paper's fixed first-n support, seeded random episodes, their files and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.datasets import load_dataset
from bench.episodes import make_episode
from bench.errors import DatasetError
from tests.test_datasets import make_tree


def test_paper_episode_first_n_sorted(tmp_path: Path) -> None:
    s = load_dataset("folder", make_tree(tmp_path, types=("b_type", "a_type"), n_type=5))
    ep = make_episode(s, "prod", shots=2, seed=1)
    assert ep.class_names == ("a_type", "b_type")
    assert [Path(p).name for p in ep.support[0]] == ["000.png", "001.png"]
    assert len(ep.queries) == 2 * 3 and ep.query_labels == (0, 0, 0, 1, 1, 1)
    assert set(ep.support_paths()).isdisjoint(ep.queries)
    # paper protocol: the split does not depend on the seed
    assert make_episode(s, "prod", 2, seed=5).hash == ep.hash
    saved = json.loads(ep.save(tmp_path / "eps").read_text())
    assert saved["support"][0] == ["prod/test/a_type/000.png", "prod/test/a_type/001.png"]


def test_random_episode_seeded(tmp_path: Path) -> None:
    s = load_dataset("folder", make_tree(tmp_path, n_type=8))
    a = make_episode(s, "prod", 3, seed=1, protocol="random")
    b = make_episode(s, "prod", 3, seed=1, protocol="random")
    c = make_episode(s, "prod", 3, seed=2, protocol="random")
    assert a == b and a.hash == b.hash
    assert a.support != c.support
    assert a.protocol == "random_episodes"


def test_too_few_images_names_folder(tmp_path: Path) -> None:
    s = load_dataset("folder", make_tree(tmp_path, n_type=3))
    with pytest.raises(DatasetError, match=r"has 3 image\(s\) in .*crack.* needs at least 4"):
        make_episode(s, "prod", 3, seed=1)


def test_include_good(tmp_path: Path) -> None:
    s = load_dataset("folder", make_tree(tmp_path, good=4))
    ep = make_episode(s, "prod", 1, 1, include_good=True)
    assert ep.class_names[-1] == "good"
