"""tests/localroot.py: what a deploy left here is found, and only that is undone."""

from __future__ import annotations

import localroot


def test_undo_removes_only_what_appeared(tmp_path, monkeypatch):
    monkeypatch.setattr(localroot, "PATHS", (str(tmp_path / "etc-gptoss"), str(tmp_path / "units" / "gptoss-*")))
    monkeypatch.setattr(localroot, "USER", "gptoss-no-such-user-here")
    (tmp_path / "units").mkdir()
    (tmp_path / "units" / "gptoss-old.service").write_text("kept: it was there before\n")
    before = localroot.footprint()
    assert before == {str(tmp_path / "units" / "gptoss-old.service")}

    (tmp_path / "etc-gptoss" / "stacks").mkdir(parents=True)
    (tmp_path / "units" / "gptoss-vllm.service").write_text("[Unit]\n")
    (tmp_path / "units" / "gptoss-link").symlink_to(tmp_path / "nowhere")  # a dangling link counts too
    assert localroot.footprint() - before == {str(tmp_path / "etc-gptoss"), str(tmp_path / "units" / "gptoss-vllm.service"),
                                              str(tmp_path / "units" / "gptoss-link")}
    localroot.undo(before)
    assert localroot.footprint() == before
    assert (tmp_path / "units" / "gptoss-old.service").read_text() == "kept: it was there before\n"
