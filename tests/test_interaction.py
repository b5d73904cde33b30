"""Interaction scripts: Raft stories whose expected output is the trace (tests/interaction/*.txt).

Each script tells one claim of the Raft paper or of Ongaro's thesis, cited in its opening
comment; raftkv/sim/script.py describes the format and the commands. When a change to the core
changes a trace on purpose, run with RAFTKV_REWRITE=1 to regenerate the expected blocks, then
read the diff: it is the change in behaviour.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from raftkv.sim.script import ScriptError, check_file, run_script

SCRIPTS = sorted((Path(__file__).parent / "interaction").glob("*.txt"))
REWRITE = os.environ.get("RAFTKV_REWRITE") == "1"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.stem)
def test_script(script: Path) -> None:
    diff = check_file(script, rewrite=REWRITE)
    if diff:
        pytest.fail(f"{script.name} printed another trace (RAFTKV_REWRITE=1 accepts it):\n{diff}", pytrace=False)


def test_a_changed_expected_line_fails_with_a_diff_naming_both_lines(tmp_path: Path) -> None:
    original = (Path(__file__).parent / "interaction" / "election.txt").read_text()
    tampered = original.replace("n1 ready: leader in term 1", "n1 ready: follower in term 1", 1)
    assert tampered != original
    copy = tmp_path / "election.txt"
    copy.write_text(tampered)

    diff = check_file(copy)

    assert diff is not None
    assert "-  n1 ready: follower in term 1" in diff
    assert "+  n1 ready: leader in term 1" in diff
    assert copy.read_text() == tampered  # reporting never rewrites


def test_rewrite_mode_writes_the_actual_trace_back(tmp_path: Path) -> None:
    original = (Path(__file__).parent / "interaction" / "election.txt").read_text()
    copy = tmp_path / "election.txt"
    copy.write_text(original.replace("n1 ready: leader in term 1", "something else", 1))

    assert check_file(copy, rewrite=True) is None
    assert copy.read_text() == original


def test_a_command_without_its_separator_is_a_script_error() -> None:
    with pytest.raises(ScriptError, match="line 5: 'status' must be followed by"):
        run_script("cluster n1\n----\nok\n\nstatus\n")


def test_an_unknown_command_is_a_script_error_naming_its_line() -> None:
    with pytest.raises(ScriptError, match="unknown command 'elect-everyone'") as caught:
        run_script("cluster n1\n----\nok\n\nelect-everyone\n----\nok\n")
    assert "at script line 5: elect-everyone" in caught.value.__notes__
