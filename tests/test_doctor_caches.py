"""What the doctor keeps between runs in its cache folder (GPTOSS_DOCTOR_CACHE): each cached
result equals a fresh computation, a changed input or a damaged file is computed again."""

from __future__ import annotations

import pytest

from gptoss_doctor.collect import venv as V


def _site(tmp_path):
    sp = tmp_path / "lib/python3.12/site-packages"
    for name, rows in (("foo", "foo/__init__.py,,\nfoo/x.py,,\nfoo-1.0.dist-info/RECORD,,\n"),
                       ("bar", "bar.py,,\nbar-2.0.dist-info/METADATA,,\n")):
        d = sp / f"{name}-{'1.0' if name == 'foo' else '2.0'}.dist-info"
        d.mkdir(parents=True)
        (d / "METADATA").write_text(f"Name: {name}\nVersion: 1.0\n\n")
        (d / "RECORD").write_text(rows)
    return sp


def tops(sp):
    dists, _ = V.scan_site_packages(sp)
    return {d["name"]: d["top_level"] for d in dists}


def test_record_tops_are_cached_by_each_records_size_and_mtime(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("GPTOSS_DOCTOR_CACHE", str(cache))
    sp = _site(tmp_path)
    parsed = []
    real = V.top_level_from_record
    monkeypatch.setattr(V, "top_level_from_record", lambda text: parsed.append(text) or real(text))

    assert tops(sp) == {"foo": ["foo"], "bar": ["bar"]} and len(parsed) == 2
    (stored,) = cache.glob("records-*.json")
    assert tops(sp) == {"foo": ["foo"], "bar": ["bar"]} and len(parsed) == 2  # nothing read again

    record = sp / "foo-1.0.dist-info" / "RECORD"
    record.write_text("foo2/__init__.py,,\n")  # reinstalled: only its RECORD is read again
    assert tops(sp) == {"foo": ["foo2"], "bar": ["bar"]} and len(parsed) == 3

    for damaged in (b"\x00", b'{"key": [], "value": {}}', b'{"key": 1}'):
        stored.write_bytes(damaged)  # not ours or not JSON: every RECORD read again, never trusted
        assert tops(sp) == {"foo": ["foo2"], "bar": ["bar"]}
    assert len(parsed) == 3 + 3 * 2


def test_a_cached_entry_of_the_wrong_shape_is_read_again(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("GPTOSS_DOCTOR_CACHE", str(cache))
    sp = _site(tmp_path)
    tops(sp)
    t = V.RecordTops(sp)
    st = (sp / "foo-1.0.dist-info" / "RECORD").stat()
    t.old["foo-1.0.dist-info"] = [st.st_size, st.st_mtime_ns, [1, 2]]  # right stat, not a list of names
    assert t.top_level(sp / "foo-1.0.dist-info" / "RECORD") == ["foo"]


@pytest.mark.parametrize("setting", ["", "file-not-dir/cache"])
def test_no_cache_folder_or_an_unwritable_one_still_reads_the_records(tmp_path, monkeypatch, setting):
    (tmp_path / "file-not-dir").write_text("")
    monkeypatch.setenv("GPTOSS_DOCTOR_CACHE", str(tmp_path / setting) if setting else "")
    sp = _site(tmp_path)
    assert tops(sp) == {"foo": ["foo"], "bar": ["bar"]}
    assert tops(sp) == {"foo": ["foo"], "bar": ["bar"]}
