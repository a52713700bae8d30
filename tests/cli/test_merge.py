"""``vdimg merge``: directions, deleted files, dry run, refusals, cancellation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vdgui.engine import OpenFlags, open_chain
from vdgui.engine.ops import merge

from .helpers import Runner, content, make_diff, make_image, snapshot

MIB = 1 << 20


@pytest.fixture
def chain(tmp_path: Path) -> list[Path]:
    """base <- mid <- top, each holding data the others partly hide."""
    base = make_image(tmp_path / "base.vdi", data={0: b"b" * MIB, 3 * MIB: b"base end"})
    mid = make_diff(base, tmp_path / "mid.vdi", data={MIB: b"m" * 5000, 0: b"mid"})
    top = make_diff(mid, tmp_path / "top.vdi", data={2 * MIB + 7: b"top" * 100, 1: b"T"})
    return [base, mid, top]


def field(text: str, key: str) -> str:
    """The value of an indented ``key: value`` line of the output."""
    for line in text.splitlines():
        name, sep, value = line.strip().partition(":")
        if sep and name == key:
            return value.strip()
    raise AssertionError(f"no {key!r} line in {text!r}")


def chain_paths(vdimg: Runner, image: Path) -> list[str]:
    result = vdimg("info", "--json", "--chain", image)
    assert result.rc == 0, result.err
    return [Path(r["path"]).name for r in json.loads(result.out)["chain"]]


def test_default_commits_image_into_parent(vdimg: Runner, chain: list[Path]) -> None:
    base, mid, top = chain
    expected = content(top)
    result = vdimg("merge", top)
    assert result.rc == 0, result.err
    # top holds two blocks; mid's parent path is as the chain found it (absolute).
    assert f"merged {top} into {mid}: 2097152 (2.0 MiB) of data" in result.text
    assert field(result.text, "deleted") == str(top)
    assert field(result.text, "chain now") == f"{base}, {mid} (base first)"
    assert not top.exists() and base.exists() and mid.exists()
    assert content(mid) == expected
    assert chain_paths(vdimg, mid) == ["base.vdi", "mid.vdi"]
    assert content(base)[:MIB] == b"b" * MIB  # the base is untouched


def test_forward_merge_of_base_into_child(vdimg: Runner, chain: list[Path]) -> None:
    base, mid, top = chain
    expected = content(top)
    result = vdimg("merge", "--from", "0", "--to", "1", top)
    assert result.rc == 0, result.err
    assert not base.exists() and mid.exists() and top.exists()
    assert content(top) == expected
    assert chain_paths(vdimg, top) == ["mid.vdi", "top.vdi"]
    record = json.loads(vdimg("info", "--json", mid).out)
    assert record["parent_uuid"] is None  # mid is a base image now


def test_whole_chain_into_base(vdimg: Runner, chain: list[Path]) -> None:
    base, mid, top = chain
    expected = content(top)
    result = vdimg("merge", "--to", "0", top)
    assert result.rc == 0, result.err
    assert not mid.exists() and not top.exists()
    assert content(base) == expected
    assert field(result.text, "deleted") == f"{mid}, {top}"


def test_dry_run_changes_nothing(vdimg: Runner, tmp_path: Path, chain: list[Path]) -> None:
    before = snapshot(*chain)
    result = vdimg("merge", "--dry-run", "--from", "2", "--to", "0", chain[2])
    assert result.rc == 0, result.err
    text = result.text
    assert "would move 3145728 (3.0 MiB) of data" in text  # two blocks in each, one hidden
    assert field(text, "would delete") == f"{chain[1]}, {chain[2]}"
    assert field(text, "chain after") == f"{chain[0]} (base first)"
    assert "nothing was changed" in text
    assert snapshot(*chain) == before


def test_chain_of_one_refused(vdimg: Runner, tmp_path: Path) -> None:
    image = make_image(tmp_path / "alone.vdi", data={0: b"x"})
    before = snapshot(image)
    vdimg("merge", image).assert_error(2, str(image), "nothing to merge")
    assert snapshot(image) == before


@pytest.mark.parametrize("args, needles", [
    (["--from", "3"], ["--from 3", "0 (the base) to 2"]),
    (["--to", "-1"], ["--to -1"]),
    (["--from", "1", "--to", "1"], ["image 1", "itself"]),
    (["--from", "x"], ["--from", "'x'"]),
])
def test_bad_numbers_refused(vdimg: Runner, chain: list[Path], args: list[str],
                             needles: list[str]) -> None:
    before = snapshot(*chain)
    vdimg("merge", *args, chain[2]).assert_error(2, *needles)
    assert snapshot(*chain) == before


def test_image_in_use_refused(vdimg: Runner, chain: list[Path]) -> None:
    with open_chain(chain[2], OpenFlags.NORMAL):
        before = snapshot(*chain)
        vdimg("merge", chain[2]).assert_error(3, str(chain[2]), "in use")
        assert snapshot(*chain) == before


def test_progress(vdimg: Runner, chain: list[Path]) -> None:
    result = vdimg("merge", "--progress", chain[2])
    assert result.rc == 0 and "merging" in result.err and "100%" in result.err


def test_ctrl_c_keeps_the_chain(vdimg: Runner, chain: list[Path], ctrl_c: None,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(merge, "CHUNK", MIB)  # one step per block
    expected = content(chain[2])
    vdimg("merge", "--progress", "--to", "0", chain[2]).assert_error(
        3, str(chain[2]), "cancelled")
    assert all(path.exists() for path in chain)
    assert content(chain[2]) == expected
    assert chain_paths(vdimg, chain[2]) == ["base.vdi", "mid.vdi", "top.vdi"]
