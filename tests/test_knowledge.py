"""The knowledge data: the shipped files load, broken copies fail with a clear line, and the
lookups answer real cases (real nvidia-smi names, real version strings)."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from gptoss_doctor import knowledge
from gptoss_doctor.knowledge import DATA_DIR, KnowledgeError, load, load_from, source_links
from gptoss_doctor.knowledge.loading import DATA_FILES


def broken_copy(tmp_path: Path, fname: str, old: str, new: str, count: int = 1) -> Path:
    """A copy of the shipped data with one textual edit in one file."""
    for f in DATA_FILES:
        shutil.copy(DATA_DIR / f, tmp_path / f)
    text = (tmp_path / fname).read_text()
    assert old in text, f"test setup: {old!r} not in {fname}"
    (tmp_path / fname).write_text(text.replace(old, new, count))
    return tmp_path


# ----------------------------------------------------------------------------- loading


def test_shipped_data_loads_and_is_cached(kb):
    assert kb is load()
    assert set(kb.stacks) >= {"vllm-0.10.1-gptoss", "vllm-0.10.1", "vllm-0.13.0", "vllm-0.14.1", "vllm-0.33.0"}
    assert set(kb.gpu_families) >= {"A100", "H100", "H200", "B200", "GB200", "RTX PRO 6000", "RTX 5090",
                                    "L40S", "MI300X", "MI325X", "MI355X", "R9700"}
    assert set(kb.models) == {"gpt-oss-20b", "gpt-oss-120b"}


def test_cached_knowledge_is_read_only(kb):
    with pytest.raises(TypeError):
        kb.stacks["vllm-9.9"] = kb.latest_stack
    with pytest.raises(TypeError):
        kb.recipe("A100", "0.10.1+gptoss").env["X"] = "1"


def test_source_links():
    text = "recipes@1e4b3ad OpenAI/GPT-OSS.md (B200); recipes@0012db8; vllm#32812; https://github.com/vllm-project/vllm/pull/26315, [W033]"
    assert source_links(text) == [
        "https://github.com/vllm-project/recipes/blob/1e4b3ad/OpenAI/GPT-OSS.md",
        "https://github.com/vllm-project/recipes/commit/0012db8",
        "https://github.com/vllm-project/vllm/pull/32812",
        "https://github.com/vllm-project/vllm/pull/26315",
    ]


def test_every_row_links_somewhere_or_names_a_file(kb):
    rows = [*kb.stacks.values(), *kb.gpu_families.values(), *kb.recipes, *kb.env_vars.values(),
            *kb.attention_backends.values(), *kb.flags.values(), *kb.drivers.values(), *kb.models.values(),
            *kb.memory_fits]
    for row in rows:
        assert row.links or re.search(r"\[W0\d+\]|\[WHEELS\]|wheel|\.md|\.json|release notes", row.source), row.source


def test_data_files_ship_inside_the_package():
    for f in DATA_FILES:
        assert (Path(knowledge.__file__).parent / f).is_file()


def test_stacks_are_ordered_oldest_first(kb):
    versions = [s.vllm_version for s in kb.stacks.values()]
    releases = [Version(v.base_version) for v in versions]
    assert releases == sorted(releases)
    assert list(kb.stacks)[0] == "vllm-0.10.1-gptoss"
    assert kb.latest_stack.name == "vllm-0.34.0"


def test_every_stack_requirement_selects_its_vllm(kb):
    for s in kb.stacks.values():
        (req,) = [Requirement(r) for r in s.requirements if Requirement(r).name == "vllm"]
        assert req.specifier.contains(s.vllm_version, prereleases=True), s.name


def test_launch_stack_matches_the_day_one_install(kb):
    s = kb.stack("vllm-0.10.1-gptoss")
    assert s.vllm == "0.10.1+gptoss"
    assert s.prerelease == "allow" and s.index_strategy == "unsafe-best-match"
    assert s.triton_dist == "pytorch-triton"
    assert s.torch_local == "+cu128"
    urls = {i.name: i.url for i in s.indexes}
    assert urls["pypi"] == "https://pypi.org/simple"
    assert urls["vllm-gptoss"] == "https://wheels.vllm.ai/gpt-oss/"
    assert urls["pytorch-nightly-cu128"] == "https://download.pytorch.org/whl/nightly/cu128"


def test_todays_stack(kb):
    s = kb.stack("vllm-0.33.0")
    assert (s.torch, s.cuda, s.triton, s.torch_local) == ("2.14.0", "13.0", "3.8.0", "+cu130")
    assert s.torch_backend in ("auto", "cu130")
    assert s.nvcc_requirement.startswith("nvidia-cuda-nvcc==13.0")
    assert Version("3.10") not in Requirement(f"x{s.python}").specifier  # 0.33.0 needs >=3.11
    s26 = kb.stack("vllm-0.26.0")
    assert (s26.torch, s26.cuda, s26.triton) == ("2.11.0", "13.0", "3.6.0")


def test_pip_cuda_toolkit_only_for_cuda_13(kb):
    """nvidia-cuda-nvcc-cu12 ships ptxas only; the CUDA 13 wheel ships nvcc under nvidia/cu13."""
    for s in kb.stacks.values():
        if s.rocm:
            assert s.cuda is None and s.nvcc_requirement is None and s.min_driver is None, s.name
        elif s.cuda.startswith("12."):
            assert s.nvcc_requirement is None and s.cuda_home_subdir is None, s.name
        else:
            assert Requirement(s.nvcc_requirement).name == "nvidia-cuda-nvcc", s.name
            assert Requirement(s.nvcc_requirement).specifier.contains(f"{s.cuda}.88"), s.name
            assert s.cuda_home_subdir == "nvidia/cu13", s.name


def test_nvcc_requirement_must_match_the_stack_cuda(tmp_path):
    d = broken_copy(tmp_path, "releases.toml", 'nvcc_requirement = "nvidia-cuda-nvcc==13.0.*"', 'nvcc_requirement = "nvidia-cuda-nvcc==13.1.*"')
    with pytest.raises(KnowledgeError, match=r"^releases\.toml: stack 'vllm-0\.20\.0': nvcc_requirement: nvidia-cuda-nvcc==13\.1\.\* does not pin CUDA 13\.0"):
        load_from(d)


def test_torch_backend_index(kb):
    idx = kb.stack("vllm-0.33.0").torch_backend_index
    assert (idx.name, idx.url) == ("pytorch-cu130", "https://download.pytorch.org/whl/cu130")
    assert kb.stack("vllm-0.10.1-gptoss").torch_backend_index is None  # explicit nightly index instead


def test_stack_min_driver_is_at_least_its_cuda_floor(kb):
    for s in kb.stacks.values():
        if s.cuda:
            assert Version(s.min_driver) >= Version(kb.min_driver_for_cuda(s.cuda)), s.name


def test_stack_lookups_by_vllm_version(kb):
    assert kb.stack_for_vllm("0.10.1+gptoss").name == "vllm-0.10.1-gptoss"
    assert kb.stack_for_vllm("0.10.1").name == "vllm-0.10.1"
    assert kb.stack_for_vllm("0.26.0+cu130").name == "vllm-0.26.0"  # a local build of a known release
    assert kb.stack_for_vllm("0.27.1").name == "vllm-0.27.1"  # every release has its stack
    assert kb.stack_for_vllm("0.35.0") is None  # newer than the knowledge
    assert kb.stack_for_vllm("0.10.1.1").name == "vllm-0.10.1.1"  # not the +gptoss pre-release


def test_unknown_stack_lists_valid_names(kb):
    with pytest.raises(KnowledgeError, match=r"unknown stack 'vllm-9\.9'.*vllm-0\.33\.0"):
        kb.stack("vllm-9.9")


# --------------------------------------------------------------------------- validation


def test_missing_source_is_named(tmp_path):
    d = broken_copy(tmp_path, "stacks.toml", 'source = "recipes@3ae4b96 OpenAI/GPT-OSS.md (wheel', 'sauce = "recipes@3ae4b96 OpenAI/GPT-OSS.md (wheel')
    with pytest.raises(KnowledgeError) as e:
        load_from(d)
    # the unknown key is reported first; once it is fixed the missing source is
    assert str(e.value).startswith("stacks.toml: stack 'vllm-0.14.1-rocm': sauce: unknown key")
    text = (d / "stacks.toml").read_text().replace('sauce = "recipes@3ae4b96 OpenAI/GPT-OSS.md (wheel', '# "')
    (d / "stacks.toml").write_text(text)
    with pytest.raises(KnowledgeError, match=r"^stacks\.toml: stack 'vllm-0\.14\.1-rocm': source: missing"):
        load_from(d)


def test_an_era_note_cannot_change_a_releases_facts(tmp_path):
    """A stacks.toml row named like a generated stack adds era/notes/source; a fact there
    (torch, cuda, ...) would contradict the release files, so it is refused."""
    d = broken_copy(tmp_path, "stacks.toml", 'name = "vllm-0.27.0"\n', 'name = "vllm-0.27.0"\ntorch = "2.11.0"\n')
    with pytest.raises(KnowledgeError, match=r"^stacks\.toml: stack 'vllm-0\.27\.0': torch: unknown key \(known: name, era, notes, source\)"):
        load_from(d)


def test_missing_source_in_lifecycle(tmp_path):
    d = broken_copy(tmp_path, "lifecycle.toml", 'name = "VLLM_ATTENTION_BACKEND"', 'name = "VLLM_ATTENTION_BACKEND"')
    text = (d / "lifecycle.toml").read_text()
    row = text.index('name = "VLLM_ATTENTION_BACKEND"')
    src = text.index("\nsource = ", row)
    (d / "lifecycle.toml").write_text(text[:src] + text[text.index("\n", src + 1):])
    with pytest.raises(KnowledgeError, match=r"^lifecycle\.toml: env_var 'VLLM_ATTENTION_BACKEND': source: missing"):
        load_from(d)


def test_unknown_key_is_named(tmp_path):
    d = broken_copy(tmp_path, "gpu_families.toml", 'name = "H200"', 'name = "H200"\ncolour = "green"')
    with pytest.raises(KnowledgeError, match=r"^gpu_families\.toml: family 'H200': colour: unknown key"):
        load_from(d)


def test_bad_version_is_named(tmp_path):
    d = broken_copy(tmp_path, "stacks.toml", 'torch = "2.9.1"', 'torch = "2.9.one"')
    with pytest.raises(KnowledgeError, match=r"^stacks\.toml: stack 'vllm-0\.14\.1-rocm': torch: '2\.9\.one' is not a version"):
        load_from(d)


def test_bad_specifier_is_named(tmp_path):
    d = broken_copy(tmp_path, "recipes.toml", 'vllm = ">=0.22"', 'vllm = "from 0.22 on"')
    with pytest.raises(KnowledgeError, match=r"^recipes\.toml: recipe #\d+ \(B200/GB200/B300/GB300 vllm from 0\.22 on\): vllm: .* not a version specifier"):
        load_from(d)


def test_bad_requirement_is_named(tmp_path):
    d = broken_copy(tmp_path, "releases.toml", 'requirements = ["vllm==0.13.0"]', 'requirements = ["vllm=>0.13"]')
    with pytest.raises(KnowledgeError, match=r"^releases\.toml: stack 'vllm-0\.13\.0': requirements: 'vllm=>0\.13' is not a requirement"):
        load_from(d)


def test_unknown_family_in_recipe(tmp_path):
    d = broken_copy(tmp_path, "recipes.toml", 'families = ["MI355X"]', 'families = ["MI999X"]')
    with pytest.raises(KnowledgeError, match=r"^recipes\.toml: recipe #\d+ .*: families: unknown family 'MI999X'.*H100"):
        load_from(d)


def test_duplicate_stack(tmp_path):
    d = broken_copy(tmp_path, "stacks.toml", 'name = "vllm-0.17.0-rocm"', 'name = "vllm-0.14.1-rocm"')
    with pytest.raises(KnowledgeError, match=r"^stacks\.toml: stack 'vllm-0\.14\.1-rocm': name: duplicate stack"):
        load_from(d)


def test_invalid_toml_is_one_line(tmp_path):
    d = broken_copy(tmp_path, "drivers.toml", '[[cuda]]', '[[cuda]', count=1)
    with pytest.raises(KnowledgeError, match=r"^drivers\.toml: not valid TOML"):
        load_from(d)


def test_stack_vllm_must_match_its_requirement(tmp_path):
    d = broken_copy(tmp_path, "releases.toml", 'requirements = ["vllm==0.13.0"]', 'requirements = ["vllm==0.12.0"]')
    with pytest.raises(KnowledgeError, match=r"stack 'vllm-0\.13\.0': requirements: vllm==0\.12\.0 does not select vllm 0\.13\.0"):
        load_from(d)


def test_stack_cuda_needs_a_driver_row(tmp_path):
    d = broken_copy(tmp_path, "releases.toml", 'cuda = "13.0"', 'cuda = "13.9"')
    with pytest.raises(KnowledgeError, match=r"stack 'vllm-0\.20\.0': cuda: '13\.9' has no row in drivers\.toml"):
        load_from(d)


def test_regex_is_checked(tmp_path):
    d = broken_copy(tmp_path, "gpu_families.toml", "name_patterns = ['\\bL40S\\b']", "name_patterns = ['L40S(']")
    with pytest.raises(KnowledgeError, match=r"family 'L40S': name_patterns: 'L40S\(' is not a regular expression"):
        load_from(d)


def test_lifecycle_order_is_checked(tmp_path):
    d = broken_copy(tmp_path, "lifecycle.toml", 'deprecated = "0.13.0"\nremoved = "0.15.0"', 'deprecated = "0.16.0"\nremoved = "0.15.0"')
    with pytest.raises(KnowledgeError, match=r"env_var 'VLLM_ATTENTION_BACKEND': removed: 0\.15\.0 is before deprecated 0\.16\.0"):
        load_from(d)


# ------------------------------------------------------------------- site stack files

SITE_STACK = '''
[[stack]]
name = "vllm-0.33.0-site"
era = "our mirror build"
vllm = "0.33.0"
torch = "2.14.0"
torch_local = "+cu130"
triton_dist = "triton"
triton = "3.8.0"
cuda = "13.0"
python = ">=3.11,<3.15"
min_driver = "580.95.05"
indexes = [{ name = "pypi", url = "https://pypi.org/simple" }, { name = "site", url = "https://pypi.example.internal/simple" }]
index_strategy = "first-index"
torch_backend = "cu130"
requirements = ["vllm==0.33.0"]
nvcc_requirement = "nvidia-cuda-nvcc==13.0.*"
cuda_home_subdir = "nvidia/cu13"
source = "site build log 2026-11-20"
'''


def test_extra_stack_file_adds_a_stack(tmp_path):
    f = tmp_path / "site-stacks.toml"
    f.write_text(SITE_STACK)
    kb = load([f])
    assert "vllm-0.33.0-site" in kb.stacks
    assert kb.stack("vllm-0.33.0-site").index("site").url == "https://pypi.example.internal/simple"
    assert "vllm-0.33.0-site" not in load().stacks  # the cached default is untouched


def test_extra_stack_file_is_validated_the_same_way(tmp_path):
    f = tmp_path / "site-stacks.toml"
    f.write_text(SITE_STACK.replace('min_driver = "580.95.05"', 'min_driver = "575.51.03"'))
    with pytest.raises(KnowledgeError, match=re.escape(f"{f}: stack 'vllm-0.33.0-site': min_driver: 575.51.03 is below CUDA 13.0's minimum 580.65.06")):
        load([f])
    f.write_text(SITE_STACK.replace('name = "vllm-0.33.0-site"', 'name = "vllm-0.33.0"'))
    with pytest.raises(KnowledgeError, match=r"name: duplicate stack 'vllm-0\.33\.0'"):
        load([f])
    f.write_text(SITE_STACK.replace("[[stack]]", "[[stacks]]"))
    with pytest.raises(KnowledgeError, match=r"stacks: unknown table"):
        load([f])


def test_extra_stack_file_as_a_bare_path(tmp_path):
    f = tmp_path / "site-stacks.toml"
    f.write_text(SITE_STACK)
    assert "vllm-0.33.0-site" in load(str(f)).stacks


def test_latest_stack_is_never_a_sites_stack(tmp_path):
    """A site stack newer than every shipped one (a pinned nightly, the testbed's broken stack)
    is found by name and by its vLLM, but "today's stack" stays the shipped one."""
    f = tmp_path / "site-stacks.toml"
    f.write_text(SITE_STACK.replace('vllm = "0.33.0"', 'vllm = "0.99.0"').replace('"vllm==0.33.0"', '"vllm==0.99.0"'))
    kb = load([f])
    shipped_latest = load().latest_stack
    assert list(kb.stacks)[-1] == "vllm-0.33.0-site"  # it is the newest row...
    assert kb.latest_stack == shipped_latest  # ...but not today's stack
    assert list(kb.site_stacks) == ["vllm-0.33.0-site"] and kb.site_stacks["vllm-0.33.0-site"].site_file == str(f)
    assert "vllm-0.33.0-site" not in kb.shipped_stacks and shipped_latest.site_file is None
    assert kb.stack_for_vllm("0.99.0").name == "vllm-0.33.0-site"  # a host on it is still recognised


def test_extra_stack_texts_as_a_snapshot_records_them(tmp_path):
    """The same stack from its text (a snapshot's copy): named by the path it had on its host."""
    kb = load(extra_stack_texts={"/etc/gptoss/stacks.d/site.toml": SITE_STACK})
    assert kb.stack("vllm-0.33.0-site").site_file == "/etc/gptoss/stacks.d/site.toml"
    with pytest.raises(KnowledgeError, match=r"^/etc/gptoss/stacks\.d/site\.toml: not valid TOML"):
        load(extra_stack_texts={"/etc/gptoss/stacks.d/site.toml": "[[stack]\n"})
    with pytest.raises(KnowledgeError, match=r"^/etc/gptoss/stacks\.d/b\.toml: stack 'vllm-0\.33\.0-site': name: duplicate"):
        load(extra_stack_texts={"/etc/gptoss/stacks.d/a.toml": SITE_STACK, "/etc/gptoss/stacks.d/b.toml": SITE_STACK})


def test_row_that_is_not_a_table(tmp_path):
    f = tmp_path / "site-stacks.toml"
    f.write_text('stack = ["vllm-0.33.0"]\n')
    with pytest.raises(KnowledgeError, match=r"stack #1: must be a table"):
        load([f])


def test_missing_extra_stack_file(tmp_path):
    with pytest.raises(KnowledgeError, match=r"nope\.toml: no such file"):
        load([tmp_path / "nope.toml"])


# ---------------------------------------------------------------------------- lifecycle


@pytest.mark.parametrize(
    "version,expected",
    [("0.10.1", "valid"), ("0.10.1+gptoss", "valid"), ("0.10.1.1", "valid"), ("0.12.0", "valid"),
     ("0.13.0", "deprecated"), ("0.14.1", "deprecated"), ("0.15.0", "removed"), ("0.33.0", "removed"),
     ("0.15.0rc1.dev12+g1234abc", "removed")],
)
def test_vllm_attention_backend_lifecycle(kb, version, expected):
    assert kb.lifecycle_status(kb.env_vars["VLLM_ATTENTION_BACKEND"], version) == expected


def test_triton_attn_v1_backend_name(kb):
    lc = kb.attention_backends["TRITON_ATTN_VLLM_V1"]
    assert kb.lifecycle_status(lc, "0.10.1+gptoss") == "valid"
    assert kb.lifecycle_status(lc, "0.33.0") == "removed"
    assert lc.replacement == "TRITON_ATTN"
    assert kb.lifecycle_status(kb.attention_backends["TRITON_ATTN"], "0.33.0") == "valid"


def test_gptoss_only_names(kb):
    decode = kb.env_vars["VLLM_USE_TRTLLM_DECODE_ATTENTION"]
    assert kb.lifecycle_status(decode, "0.10.1+gptoss") == "valid"
    assert kb.lifecycle_status(decode, "0.10.1") == "removed"
    assert kb.lifecycle_status(decode, "0.10.0") == "not-yet"
    renamed = kb.env_vars["VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8"]
    assert kb.lifecycle_status(renamed, "0.10.1+gptoss") == "not-yet"
    assert kb.lifecycle_status(renamed, "0.10.1") == "valid"
    assert kb.lifecycle_status(renamed, "0.22.0") == "deprecated"
    assert kb.lifecycle_status(renamed, "0.23.0") == "deprecated"  # still in 0.23.0's envs.py
    assert kb.lifecycle_status(renamed, "0.24.0") == "removed"


def test_replacements_that_name_a_row_are_valid_where_the_old_name_stops(kb):
    """A replacement that is itself a backend or env var row must work where the old name ends."""
    for table in (kb.env_vars, kb.attention_backends):
        for lc in table.values():
            new = table.get((lc.replacement or "").strip())
            if new is None:
                continue
            end = lc.removed or kb.latest_stack.vllm
            assert kb.lifecycle_status(new, end) in ("valid", "deprecated"), (lc.name, new.name, end)


def test_fork_only_names_are_never_valid_upstream(kb):
    lc = kb.env_vars["VLLM_USE_AITER_TRITON_GEMM"]
    assert kb.lifecycle_status(lc, "0.10.1") == "removed"
    assert lc.replacement == "VLLM_ROCM_USE_AITER_TRITON_GEMM"


def test_flag_lifecycles(kb):
    assert kb.lifecycle_status(kb.flags["--tool-call-parser openai"], "0.10.1") == "not-yet"
    assert kb.lifecycle_status(kb.flags["--tool-call-parser openai"], "0.10.2") == "valid"
    assert kb.lifecycle_status(kb.flags["--compilation-config full_cuda_graph"], "0.33.0") == "removed"
    assert kb.flags["--async-scheduling"].default_since == "0.14.0"
    compat = kb.flags["--async-scheduling structured-output"]
    assert kb.lifecycle_status(compat, "0.11.0") == "not-yet"
    assert kb.lifecycle_status(compat, "0.11.1") == "valid"
    assert kb.lifecycle("--attention-backend") is kb.flags["--attention-backend"]


def test_lifecycle_status_by_name(kb):
    assert kb.lifecycle_status("TRITON_ATTN_VLLM_V1", "0.33.0") == "removed"
    with pytest.raises(KnowledgeError, match=r"no lifecycle row for 'VLLM_NOPE'"):
        kb.lifecycle_status("VLLM_NOPE", "0.33.0")


def test_bad_version_in_a_lookup_is_a_knowledge_error(kb):
    with pytest.raises(KnowledgeError, match=r"'latest' is not a version"):
        kb.lifecycle_status(kb.env_vars["VLLM_ATTENTION_BACKEND"], "latest")


# ------------------------------------------------------------------------------ recipes


def test_launch_recipes(kb):
    a100 = kb.recipe("A100", "0.10.1+gptoss")
    assert a100.env == {"VLLM_ATTENTION_BACKEND": "TRITON_ATTN_VLLM_V1"}
    assert "--async-scheduling" in a100.serve_flags
    assert kb.recipe("H100", "0.10.1+gptoss").serve_flags == ("--async-scheduling",)
    b200 = kb.recipe("B200", "0.10.1+gptoss")
    assert {"VLLM_USE_TRTLLM_ATTENTION", "VLLM_USE_TRTLLM_DECODE_ATTENTION",
            "VLLM_USE_TRTLLM_CONTEXT_ATTENTION", "VLLM_USE_FLASHINFER_MXFP4_MOE"} <= set(b200.env)


def test_recipe_on_0_10_1_drops_the_launch_env(kb):
    assert kb.recipe("A100", "0.10.1").env == {}
    assert kb.recipe("A100", "0.10.1.1").env == {}


def test_todays_blackwell_recipe_is_the_working_form(kb):
    r = kb.recipe("B200", "0.33.0")
    assert "VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8" not in r.env
    assert "VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8" in r.notes  # says what upstream still writes
    flags = list(r.serve_flags)
    assert flags[flags.index("--moe-backend") + 1] == "flashinfer_trtllm"
    assert kb.recipe("B200", "0.20.2").env == {"VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8": "1"}
    assert "--moe-backend" not in kb.recipe("B200", "0.20.2").serve_flags  # not before 0.17


def test_dev_builds_find_their_release_recipe(kb):
    assert kb.recipe("H100", "0.14.0rc2.dev143+gc0a350ca7") is kb.recipe("H100", "0.14.0")


def test_recipe_for_unknown_family(kb):
    with pytest.raises(KnowledgeError, match=r"unknown GPU family 'V100'"):
        kb.recipe("V100", "0.33.0")


def test_no_recipe_before_gpt_oss_support(kb):
    assert kb.recipe("H100", "0.9.2") is None
    assert kb.recipe("RTX 5090", "0.10.1+gptoss") is None  # the launch wheel did not support it
    assert kb.recipe("RTX 5090", "0.10.1") is not None


def test_every_recipe_env_var_and_backend_is_valid_in_its_own_stacks(kb):
    """Data consistency: what a recipe row prescribes exists in every known stack it covers."""
    for r in kb.recipes:
        if r.image:  # written for a vendor fork image, not for any PyPI stack
            continue
        for stack in kb.stacks.values():
            if not r.covers(stack.vllm):
                continue
            for name in r.env:
                lc = kb.env_vars.get(name)
                assert lc is not None, f"recipe {r.families} {r.vllm}: {name} has no lifecycle row"
                assert kb.lifecycle_status(lc, stack.vllm) in ("valid", "deprecated"), (r.families, r.vllm, name, stack.name)
            flags = r.serve_flags
            for flag, value in zip(flags, flags[1:]):
                if flag == "--attention-backend":
                    lc = kb.attention_backends[value]
                    assert kb.lifecycle_status(lc, stack.vllm) == "valid", (r.families, value, stack.name)
            for flag in flags:
                lc = kb.flags.get(flag)
                if lc is not None:
                    assert kb.lifecycle_status(lc, stack.vllm) in ("valid", "deprecated"), (r.families, r.vllm, flag, stack.name)


def test_every_family_has_a_recipe_today_unless_documented(kb):
    missing = {f for f in kb.gpu_families if kb.recipe(f, "0.33.0") is None}
    assert missing == {"R9700"}  # no upstream R9700 recipe after the day-one fork image


# -------------------------------------------------------------------------------- GPUs


@pytest.mark.parametrize(
    "name,family",
    [("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H100 PCIe", "H100"), ("NVIDIA H200", "H200"),
     ("NVIDIA B200", "B200"), ("NVIDIA GB200", "GB200"), ("NVIDIA A100-SXM4-80GB", "A100"),
     ("NVIDIA A100 80GB PCIe", "A100"), ("NVIDIA L40S", "L40S"), ("NVIDIA GeForce RTX 5090", "RTX 5090"),
     ("NVIDIA RTX PRO 6000 Blackwell Server Edition", "RTX PRO 6000"),
     ("AMD Instinct MI300X", "MI300X"), ("AMD Instinct MI325X", "MI325X"), ("AMD Instinct MI355X", "MI355X"),
     ("AMD Radeon AI PRO R9700", "R9700")],
)
def test_family_for_real_gpu_names(kb, name, family):
    assert kb.family_for_gpu(name).name == family


def test_family_for_gpu_does_not_confuse_neighbours(kb):
    assert kb.family_for_gpu("NVIDIA GH200 480GB").name == "GH200"  # not H200
    assert kb.family_for_gpu("Tesla V100-SXM2-16GB", compute_cap="7.0") is None
    assert kb.family_for_gpu("NVIDIA GB200", compute_cap="10.0").name == "GB200"


@pytest.mark.parametrize("cc", ["9.0", 9, 9.0, "9"])
def test_family_for_gpu_compute_cap_forms(kb, cc):
    assert kb.family_for_gpu("NVIDIA H100 PCIe", compute_cap=cc).name == "H100"


def test_family_for_gpu_by_gfx_alone(kb):
    assert kb.family_for_gpu("", gfx="gfx950").name == "MI355X"
    assert kb.family_for_gpu("AMD Instinct MI300X", gfx="gfx942").name == "MI300X"


# ------------------------------------------------------------------------------ drivers


def test_min_driver_for_cuda(kb):
    assert kb.min_driver_for_cuda("13.0") == "580.65.06"
    assert kb.min_driver_for_cuda("12.8") == "570.26"
    assert kb.min_driver_for_cuda("13.0.88") == "580.65.06"  # a full toolkit version
    assert kb.min_driver_for_cuda("9.0") is None


# ------------------------------------------------------------------------------- models


def test_models_match_the_20b_config(kb):
    import json

    # the repo's copy of the model's public config (shared/data/gpt-oss-20b-config.json)
    cfg_path = Path(__file__).parent / "fixtures" / "gpu" / "gpt-oss-20b" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    m = kb.models["gpt-oss-20b"]
    assert m.layers == cfg["num_hidden_layers"]
    assert m.num_attention_heads == cfg["num_attention_heads"]
    assert m.num_kv_heads == cfg["num_key_value_heads"]
    assert m.head_dim == cfg["head_dim"]
    assert m.hidden_size == cfg["hidden_size"]
    assert m.vocab_size == cfg["vocab_size"]
    assert m.num_experts == cfg["num_local_experts"]
    assert m.sliding_window == cfg["sliding_window"]
    assert m.sliding_layers == cfg["layer_types"].count("sliding_attention")


def test_kv_bytes(kb):
    m20, m120 = kb.models["gpt-oss-20b"], kb.models["gpt-oss-120b"]
    assert m20.kv_bytes_for_context(100) == 100 * 2 * 24 * 8 * 64 * 2  # within the window: every layer
    every_layer = 2 * 36 * 8 * 64 * 2
    assert m120.kv_bytes_for_context(100) == 100 * every_layer
    # sliding layers stop growing after the window: a long context costs about half of every layer
    assert m120.kv_bytes_for_context(100_000) < 0.51 * 100_000 * every_layer
    # vLLM 0.25.1 on H100: 10.52 GiB of KV cache held 303,646 tokens of gpt-oss-120b
    assert abs(m120.kv_bytes_for_context(303_646) - 10.52 * 2**30) < 0.01 * 10.52 * 2**30
    assert m120.weights_gib <= m120.weights_gib_max


def test_model_lookup_by_hf_id_and_path(kb):
    assert kb.model("openai/gpt-oss-120b").name == "gpt-oss-120b"
    assert kb.model("/models/gpt-oss-20b/").name == "gpt-oss-20b"
    assert kb.model("meta-llama/Llama-3-8B") is None


def test_memory_fit_h100(kb):
    tp1 = kb.memory_fit("gpt-oss-120b", "H100", 1)
    assert tp1.gpu_memory_utilization_min == 0.95
    assert tp1.max_num_batched_tokens_max == 1024
    tp2 = kb.memory_fit("gpt-oss-120b", "H100", 2)
    assert tp2.gpu_memory_utilization_below == 0.95
    assert kb.memory_fit("gpt-oss-20b", "H100", 1) is None


# ------------------------------------------------------------- the wheel re-check tool


def _fake_vllm_wheel(path: Path, *, envs: list[str], backends: list[str], args: list[str], strip_suffix=False) -> Path:
    """A real zip laid out like a vLLM wheel, holding only the files the tool reads."""
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("vllm/envs.py", "environment_variables = {\n" + "".join(f'    "{e}": lambda: None,\n' for e in envs) + "}\n")
        z.writestr("vllm/attention/backends/registry.py",
                   "class AttentionBackendEnum(Enum):\n" + "".join(f"    {b} = 'x'\n" for b in backends) + "\n\ndef f():\n    pass\n")
        z.writestr("vllm/engine/arg_utils.py", "\n".join(f"    {a}: int = 0" for a in args) + "\n")
        z.writestr("vllm/attention/selector.py", 'x = name.removesuffix(\n    "_VLLM_V1")\n' if strip_suffix else "")
    return path


def test_wheelcheck_reads_a_wheel_and_finds_disagreements(kb, tmp_path):
    import zipfile

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import wheelcheck as wc  # the maintainer tool (scripts/), outside the doctor wheel

    whl = _fake_vllm_wheel(tmp_path / "vllm-0.12.0.whl", envs=["VLLM_ATTENTION_BACKEND", "VLLM_USE_V1"],
                           backends=["TRITON_ATTN", "FLASH_ATTN"], args=["async_scheduling", "cuda_graph_sizes"],
                           strip_suffix=True)
    w = wc.wheel_names(zipfile.ZipFile(whl))
    assert "TRITON_ATTN_VLLM_V1" in w["attention_backends"]  # accepted through suffix stripping
    seen = wc.presence(kb, w)
    assert seen["VLLM_ATTENTION_BACKEND"] is True and seen["--cuda-graph-sizes"] is True
    assert seen["--moe-backend"] is False
    bad = wc.disagreements(kb, {"0.12.0": seen})
    # this fake 0.12.0 still has VLLM_USE_V1 (gone from 0.11.1) and lacks names 0.12.0 has
    assert "VLLM_USE_V1: vllm 0.12.0: knowledge says removed, the wheel has it" in bad
    assert any(line.startswith("--max-cudagraph-capture-size: vllm 0.12.0: knowledge says valid, the wheel lacks it") for line in bad)
    assert not any(line.startswith(("VLLM_ATTENTION_BACKEND:", "TRITON_ATTN_VLLM_V1:", "--cuda-graph-sizes:")) for line in bad)


# ---------------------------------------------------------------------- attention sinks

LOGS = Path(__file__).parent / "fixtures" / "logs"


def test_attention_sinks_agree_with_the_logs_recorded_on_an_h200(kb):
    """vLLM 0.26.0 on the lent H200 (Hopper): the selector's "potential backends" are the ones
    that serve sinks there, and forcing FLASHINFER failed with 'attention sinks not supported'."""
    healthy = (LOGS / "healthy-0260-h200-recorded.log").read_text()
    potential = re.search(r"out of potential backends: \[([^\]]*)\]", healthy).group(1)
    for backend in re.findall(r"'(\w+)'", potential):
        assert kb.serves_sinks(backend, "0.26.0", "hopper") is True, backend
    forced = (LOGS / "vllm0260-flashinfer-forced-on-h200.log").read_text()
    assert "AttentionBackendEnum.FLASHINFER is not valid for this configuration. Reason: ['attention sinks not supported']" in forced
    assert kb.serves_sinks("FLASHINFER", "0.26.0", "hopper") is False


@pytest.mark.parametrize("backend,vllm,arch,expected", [
    ("FLASHINFER", "0.10.1+gptoss", "blackwell", True),   # TRT-LLM-gen on SM100
    ("FLASHINFER", "0.27.1", "blackwell-rtx", False),     # SM12x XQA came in 0.28
    ("FLASHINFER", "0.28.0", "blackwell-rtx", True),
    ("FLASHINFER", "0.29.0", "hopper", False),            # SM90 XQA came in 0.30
    ("FLASHINFER", "0.33.0", "hopper", True),
    ("FLASHINFER", "0.33.0", "ada", False),
    ("FLASH_ATTN", "0.19.1", "blackwell", False),         # FA3 only before 0.20
    ("FLASH_ATTN", "0.20.0", "blackwell", True),          # FA4 on SM10x
    ("FLASH_ATTN", "0.33.0", "blackwell-rtx", False),     # FA2 on SM12x: no sinks
    ("FLASH_ATTN", "0.14.0rc2.dev5", "hopper", True),     # a pre-release counts as its release
    ("TRITON_ATTN", "0.33.0", "ampere", True),
    ("ROCM_ATTN", "0.33.0", "cdna3", False),
    ("ROCM_ATTN", "0.17.0", "cdna3", None),               # not read for that release: unknown
    ("TORCH_SDPA", "0.33.0", "hopper", None),             # no row: unknown, never judged
])
def test_which_backend_serves_sinks_where(kb, backend, vllm, arch, expected):
    assert kb.serves_sinks(backend, vllm, arch) is expected


def test_attention_sinks_rows_are_validated(tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(DATA_DIR, data, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    f = data / "attention_sinks.toml"
    good = f.read_text()
    f.write_text(good.replace('archs = ["hopper"]', 'archs = ["hoppr"]', 1))
    with pytest.raises(KnowledgeError, match=r"attention_sinks\.toml: sinks 'FLASH_ATTN' vllm >=0\.10\.1,<0\.20\.0: archs: unknown arch 'hoppr'"):
        load_from(data)
    f.write_text(good.replace('backend = "ROCM_ATTN"', 'backend = "ROCM_ATN"'))
    with pytest.raises(KnowledgeError, match=r"backend: 'ROCM_ATN' has no \[\[attention_backend\]\] row"):
        load_from(data)


def test_gpt_oss_package_rows_judge_the_package_version(kb):
    """PYTHON_EXECUTION_BACKEND values are gpt-oss's: 'UV' (the guide's) was never read by any
    release; dangerously_use_uv from gpt-oss 0.0.5."""
    uv = kb.env_vars["PYTHON_EXECUTION_BACKEND=UV"]
    assert uv.package == "gpt-oss" and "dangerously_use_uv" in uv.replacement
    assert {kb.lifecycle_status(uv, v) for v in ("0.0.1", "0.0.5", "0.0.9")} == {"removed"}
    new = kb.env_vars["PYTHON_EXECUTION_BACKEND=dangerously_use_uv"]
    assert [kb.lifecycle_status(new, v) for v in ("0.0.4", "0.0.5", "0.0.9")] == ["not-yet", "valid", "valid"]
    assert kb.env_vars["VLLM_ATTENTION_BACKEND"].package == "vllm"


# ------------------------------------------------------------- the GPUs people own

@pytest.mark.parametrize("name,cc,family,arch", [
    ("NVIDIA B300 SXM6 AC", "10.3", "B300", "blackwell-ultra"),
    ("NVIDIA GB300", "10.3", "GB300", "blackwell-ultra"),
    ("NVIDIA GeForce RTX 4090", "8.9", "RTX 4090", "ada"),
    ("NVIDIA GeForce RTX 3090", "8.6", "RTX 3090", "ampere"),
    ("NVIDIA GeForce RTX 5090", "12.0", "RTX 5090", "blackwell-rtx"),
    ("NVIDIA L4", "8.9", "L4", "ada"),
    ("NVIDIA L40", "8.9", "L40", "ada"),
    ("NVIDIA L40S", "8.9", "L40S", "ada"),
    ("NVIDIA A10G", "8.6", "A10", "ampere"),
    ("NVIDIA A10", "8.6", "A10", "ampere"),
    ("NVIDIA A40", "8.6", "A40", "ampere"),
    ("NVIDIA RTX A6000", "8.6", "RTX A6000", "ampere"),
    ("NVIDIA RTX 6000 Ada Generation", "8.9", "RTX 6000 Ada", "ada"),
    ("NVIDIA H20", "9.0", "H20", "hopper"),
    ("NVIDIA H800", "9.0", "H800", "hopper"),
    ("NVIDIA A800 80GB PCIe", "8.0", "A800", "ampere"),
    ("NVIDIA GH200 480GB", "9.0", "GH200", "hopper"),
    ("NVIDIA GB10", "12.1", "GB10", "blackwell-rtx"),
])
def test_gpus_people_own_have_a_family_and_a_recipe_in_every_era(kb, name, cc, family, arch):
    fam = kb.family_for_gpu(name, compute_cap=cc)
    assert (fam.name, fam.arch, fam.compute_capability) == (family, arch, cc)
    for s in kb.shipped_stacks.values():
        if s.vllm_version.local:
            continue
        recipe = kb.recipe(family, s.vllm)
        assert recipe is not None, (family, s.vllm)
        # the attention backend the recipe forces (or vLLM's default) must serve sinks there
        forced = recipe.env.get("VLLM_ATTENTION_BACKEND") or next(
            (recipe.serve_flags[i + 1] for i, f in enumerate(recipe.serve_flags) if f == "--attention-backend"), None)
        if forced:
            assert kb.serves_sinks(forced, s.vllm, arch) is True, (family, s.vllm, forced)


def test_b300_is_not_given_hopper_or_early_flashinfer_settings(kb):
    """The upstream script hands SM103 the Hopper file; before 0.13 FlashInfer sinks were SM100-only."""
    assert kb.serves_sinks("FLASHINFER", "0.12.0", "blackwell-ultra") is False
    assert kb.serves_sinks("FLASHINFER", "0.12.0", "blackwell") is True
    assert kb.recipe("B300", "0.12.0").env["VLLM_ATTENTION_BACKEND"] == "TRITON_ATTN"
    assert kb.recipe("B300", "0.33.0") == kb.recipe("B200", "0.33.0")
    assert kb.recipe("B300", "0.33.0") != kb.recipe("H100", "0.33.0")


def test_rocm_sinks_follow_the_release_files(kb):
    assert kb.serves_sinks("ROCM_ATTN", "0.18.1", "cdna3") is True
    assert kb.serves_sinks("ROCM_ATTN", "0.19.0", "cdna3") is False
    assert kb.serves_sinks("ROCM_AITER_UNIFIED_ATTN", "0.18.0", "cdna4") is True
    assert kb.serves_sinks("ROCM_AITER_UNIFIED_ATTN", "0.17.1", "cdna3") is None  # not read for that release


# ------------------------------------------------------- the generated releases and stacks

def test_every_release_from_0_10_1_has_a_generated_stack(kb):
    releases = list(kb.releases)
    assert releases[0] == "0.10.1" and "0.34.0" in releases and len(releases) >= 39
    for v, rel in kb.releases.items():
        s = kb.stack_for_vllm(v)
        assert s is not None and s.generated and s.vllm == v, v
        assert s.torch == rel.pin("torch"), v  # the stack installs what the release pins
        assert s.cuda == rel.cuda and s.torch_local == "+cu" + rel.cuda.replace(".", ""), v
        assert f"https://pypi.org/project/vllm/{v}/" in s.links, v


def test_audit_rows_read_from_the_release_files(kb):
    """The rows the 2026-12-03 audit found wrong, as the release files say them."""
    s = kb.stack("vllm-0.11.2")
    assert (s.cuda, s.torch_local, s.min_driver) == ("12.8", "+cu128", "570.26")  # E1
    assert kb.stack("vllm-0.12.0").cuda == "12.9"
    assert kb.stack("vllm-0.27.0").torch == "2.13.0"  # E9
    assert kb.release("0.20.2").cudart == "13" and kb.release("0.20.2").cuda == "13.0"  # E2
    assert not kb.release("0.31.0").download_kernels and kb.release("0.32.0").download_kernels  # E5
    assert "VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8" in kb.release("0.23.0").env_vars  # E4
    assert "VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8" not in kb.release("0.24.0").env_vars
    assert kb.lifecycle_status("VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8", "0.21.0") == "valid"  # E3
    assert kb.lifecycle_status("VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8", "0.23.0") == "deprecated"
    new = kb.stack("vllm-0.34.0")  # S1
    assert (new.torch, new.triton, new.cuda, new.python) == ("2.14.0", "3.8.0", "13.0", ">=3.11,<3.15")
    assert kb.latest_stack is new


def test_lifecycle_env_vars_agree_with_every_release(kb):
    """Each VLLM_* lifecycle row is present (valid/deprecated) exactly in the releases whose
    envs.py defines it: the lifecycle is checked against all releases, offline."""
    bad = []
    for name, lc in kb.env_vars.items():
        if not name.startswith("VLLM_") or not lc.upstream or lc.only_in or lc.package != "vllm":
            continue
        for v, rel in kb.releases.items():
            present = kb.lifecycle_status(lc, v) in ("valid", "deprecated")
            if present != (name in rel.env_vars):
                bad.append(f"{name} on {v}: lifecycle {kb.lifecycle_status(lc, v)}, envs.py {'has' if name in rel.env_vars else 'lacks'} it")
    assert not bad, "\n".join(bad)


def test_lifecycle_backends_agree_with_every_release(kb):
    bad = []
    for name, lc in kb.attention_backends.items():
        if not lc.upstream or lc.only_in:
            continue
        for v, rel in kb.releases.items():
            status = kb.lifecycle_status(lc, v)
            if status == "valid" and name not in rel.attention_backends:
                bad.append(f"{name} on {v}: lifecycle valid, the registry lacks it")
            if status in ("removed", "not-yet") and name in rel.attention_backends:
                bad.append(f"{name} on {v}: lifecycle {status}, the registry has it")
    assert not bad, "\n".join(bad)


# --------------------------------------------- the generator, on recorded release files

RELEASE_FIXTURES = Path(__file__).parent / "fixtures" / "releases"


def _gen_stacks():
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import gen_stacks  # the maintainer command (scripts/), outside the doctor wheel

    return gen_stacks


def test_generator_on_recorded_releases_gives_the_shipped_rows(kb, tmp_path, monkeypatch):
    """tests/fixtures/releases holds what --record kept of 0.10.1, 0.11.2 and 0.34.0 (METADATA,
    envs.py, the backend registry, the compiled library's version strings) and of the torch
    wheels they pin: the generator, run on them with no network, writes the rows shipped in
    releases.toml (which it wrote from PyPI)."""
    import tomllib
    import urllib.request

    def no_network(*a, **k):
        raise AssertionError("the offline generator touched the network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    gen = _gen_stacks()
    out = tmp_path / "releases.toml"
    assert gen.main(["--offline", str(RELEASE_FIXTURES), "--out", str(out)]) == 0
    doc = tomllib.loads(out.read_text())
    shipped = tomllib.loads((DATA_DIR / "releases.toml").read_text())
    shipped_stacks = {r["name"]: r for r in shipped["stack"]}
    assert [r["name"] for r in doc["stack"]] == ["vllm-0.10.1", "vllm-0.11.2", "vllm-0.34.0"]
    for row in doc["stack"]:
        assert row == shipped_stacks[row["name"]], row["name"]
    env: set[str] = set()
    for row in doc["release"]:
        env = (set(row.get("env_vars", env)) | set(row.get("env_vars_added", ()))) - set(row.get("env_vars_removed", ()))
        rel = kb.release(row["vllm"])
        assert env == set(rel.env_vars) and tuple(row["attention_backends"]) == rel.attention_backends, row["vllm"]
        assert (row["nvcc"], tuple(row["pins"])) == (rel.nvcc, rel.pins)


def test_generator_reads_the_cuda_13_version_string():
    """nvcc 12 leaves 'release 12.8, V12.8.93'; CUDA 13's compressed fatbins keep 'release 13.0, V.88'."""
    gen = _gen_stacks()
    for text, want in ((b"Cuda compilation tools, release 12.8, V12.8.93\0", ("12.8", "93")),
                       (b"xx release 13.0, V.88\0", ("13.0", "88"))):
        m = re.search(gen.NVCC, text)
        assert (m.group(1).decode(), m.group(2).decode()) == want


def test_generator_names_what_it_could_not_read(tmp_path, capsys):
    """A release whose pinned torch was not recorded: one line naming it, exit 2."""
    gen = _gen_stacks()
    shutil.copytree(RELEASE_FIXTURES / "vllm-0.11.2", tmp_path / "vllm-0.11.2")
    assert gen.main(["--offline", str(tmp_path), "--out", str(tmp_path / "x.toml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["gen_stacks: vllm 0.11.2: torch 2.9.0's Triton requirement was not read (torch-2.9.0/ was not recorded)"]
    assert not (tmp_path / "x.toml").exists()


# ------------------------- newer than the knowledge: what the collector reads of the release

@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build a library that links libcudart.so.13")
def test_collector_reads_a_new_releases_pins_and_cuda_major(tmp_path):
    """A vLLM newer than the knowledge is judged by its METADATA pins and the libcudart its
    compiled library links (a real ELF here, linked against a stand-in libcudart.so.13)."""
    import subprocess

    from gptoss_doctor.collect.venv import read_dist_info, vllm_facts

    sp = tmp_path / "site-packages"
    (sp / "vllm").mkdir(parents=True)
    (tmp_path / "a.c").write_text("int f(void){return 1;}\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libcudart.so.13", "-o", str(tmp_path / "libcudart.so"),
                    str(tmp_path / "a.c")], check=True)
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,--no-as-needed", "-o", str(sp / "vllm" / "_C_stable_libtorch.abi3.so"),
                    str(tmp_path / "a.c"), "-L", str(tmp_path), "-lcudart"], check=True)
    (sp / "vllm" / "envs.py").write_text('environment_variables = {\n    "VLLM_NEW": lambda: 1,\n}\n')
    info = sp / "vllm-0.35.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.4\nName: vllm\nVersion: 0.35.0\nRequires-Python: >=3.11\n"
                                   "Requires-Dist: torch==2.15.0\nRequires-Dist: regex\n"
                                   'Requires-Dist: tensorizer==2.10.1; extra == "tensorizer"\n\nlong description: torch==9\n')
    dist = read_dist_info(info, sp)
    install = vllm_facts([sp], [dist])["vllm.install"]["value"]
    assert install["requires"] == ["torch==2.15.0"] and install["requires_python"] == ">=3.11"
    assert install["cudart"] == "13"


# ------------------------------------------------ CUDA 12 drivers on the CUDA 13 releases

def test_cuda_12_driver_gets_vllms_cu129_build_not_a_cu129_torch(kb):
    """From 0.20 the PyPI wheel links libcudart.so.13 (driver >= 580): a CUDA 12 driver needs
    vLLM's own cu129 build, from vLLM's wheel index (a named index a deploy can mirror)."""
    assert kb.release("0.20.2").cudart == "13"
    pypi = kb.stack("vllm-0.20.2")
    assert pypi.torch_local == "+cu130" and pypi.min_driver == "580.65.06"
    for name in ("vllm-0.20.2-cu129", "vllm-0.34.0-cu129"):
        s = kb.stack(name)
        assert s.vllm.endswith("+cu129") and s.torch_local == "+cu129" and s.cuda == "12.9"
        assert s.index("vllm-cu129").url == f"https://wheels.vllm.ai/{s.vllm.split('+')[0]}/cu129"
        assert Version(s.min_driver) < Version("580")
        assert kb.stack_for_vllm(s.vllm) is s
    assert kb.stack_for_vllm("0.34.0+cu129").name == "vllm-0.34.0-cu129"
    assert kb.stack_for_vllm("0.34.0+cu130").name == "vllm-0.34.0"  # the PyPI build is that CUDA
    assert "vllm-0.20.2-cu129" in pypi.notes and "torch_backend = cu129" not in pypi.notes  # audit E2


def test_drivers_reach_cuda_13_5_and_cu132_torch_builds_are_valid(kb, tmp_path):
    assert {"13.3", "13.4", "13.5"} <= set(kb.drivers)
    assert kb.min_driver_for_cuda("13.5.37") == "610.43.02"
    assert all(kb.drivers[c].compat_min_driver == "580.65.06" for c in ("13.3", "13.4", "13.5"))
    f = tmp_path / "site.toml"
    f.write_text(SITE_STACK.replace('torch_local = "+cu130"', 'torch_local = "+cu132"').replace('cuda = "13.0"', 'cuda = "13.2"')
                 .replace('torch_backend = "cu130"', 'torch_backend = "cu132"').replace("13.0.*", "13.2.*")
                 .replace('min_driver = "580.95.05"', 'min_driver = "595.45.04"'))
    s = load([f]).stack("vllm-0.33.0-site")
    assert s.torch_build == "2.14.0+cu132" and s.torch_backend_index.url == "https://download.pytorch.org/whl/cu132"


def test_rocm_stacks_are_vllms_rocm_wheels(kb):
    rocm = [s for s in kb.shipped_stacks.values() if s.rocm]
    assert {s.name for s in rocm} >= {"vllm-0.14.1-rocm", "vllm-0.17.0-rocm", "vllm-0.34.0-rocm"}
    for s in rocm:
        assert (s.rocm, s.min_glibc, s.python, s.vendor) == ("7.0", "2.35", ">=3.12,<3.13", "amd")
        assert s.torch_local == "+rocm7.0" and s.triton_dist == "pytorch-triton-rocm" and s.cuda is None
        assert s.index("vllm-rocm").url == "https://wheels.vllm.ai/rocm"
        assert kb.recipe("MI300X", s.vllm) is not None and kb.recipe("MI355X", s.vllm) is not None
    assert kb.stack_for_vllm("0.17.0+rocm700").name == "vllm-0.17.0-rocm"
    assert kb.stack_for_vllm("0.17.0+rocm701").name == "vllm-0.17.0-rocm"  # another ROCm build of it
    assert kb.latest_stack.rocm is None  # today's stack stays the PyPI one


def test_sources_name_nothing_of_the_machine_they_were_written_on(kb):
    """Sources are public URLs, release files or this project's own files: never a path of a
    development machine or a private research note."""
    rows = [*kb.stacks.values(), *kb.releases.values(), *kb.gpu_families.values(), *kb.recipes,
            *kb.env_vars.values(), *kb.attention_backends.values(), *kb.flags.values(), *kb.drivers.values(),
            *kb.models.values(), *kb.memory_fits, *kb.attention_sinks]
    private = re.compile(r"/work/|/root/|/home/|vllm-gptoss-matrix|failure-catalog|-facts\.md|knowledge-audit")
    assert not [r.source for r in rows if private.search(r.source)]
    for f in DATA_FILES:
        assert not private.search((DATA_DIR / f).read_text()), f
    # project files a source names exist
    repo = Path(__file__).resolve().parent.parent
    for r in rows:
        for path in re.findall(r"(?<![\w/.])((?:tests|docs)/[\w./-]+\.(?:log|md|json))", r.source):
            assert (repo / path).exists(), path


# ------------------------------------------------------------ the parse cache

def test_cache_is_keyed_by_the_files_hashes(tmp_path, monkeypatch):
    """The validated rows are cached under the SHA-256 of the data files (and of the validating
    code): the same bytes are neither parsed nor validated again, a changed file is a new key."""
    from gptoss_doctor.knowledge import loading

    data = tmp_path / "data"
    shutil.copytree(DATA_DIR, data, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    monkeypatch.setattr(loading, "_CODE", tuple(DATA_DIR / p.name for p in loading._CODE))
    cache = tmp_path / "cache"
    monkeypatch.setenv("GPTOSS_DOCTOR_CACHE", str(cache))
    first = loading._validated_rows(data)
    (written,) = cache.glob("knowledge-*.marshal")

    def refuse(*a, **k):
        pytest.fail("parsed or validated again despite the cache")

    monkeypatch.setattr(loading.tomllib, "loads", refuse)
    monkeypatch.setattr(loading, "_validate", refuse)
    assert loading._validated_rows(data) == first
    assert loading._assemble(loading._validated_rows(data)).latest_stack.name == load().latest_stack.name

    monkeypatch.undo()
    monkeypatch.setattr(loading, "_CODE", tuple(DATA_DIR / p.name for p in loading._CODE))
    monkeypatch.setenv("GPTOSS_DOCTOR_CACHE", str(cache))
    f = data / "stacks.toml"
    f.write_text(f.read_text().replace('era = "torch 2.13.0 / Triton 3.7.1"', 'era = "torch 2.13 arrives"'))
    changed = loading._assemble(loading._validated_rows(data))
    assert changed.stack("vllm-0.27.0").era == "torch 2.13 arrives"  # a changed file is a new key
    assert [p.name for p in cache.glob("knowledge-*.marshal")] != [written.name]  # and the old one goes
    written = next(cache.glob("knowledge-*.marshal"))

    written.write_bytes(b"\x00 not marshal")  # a damaged cache is ignored, not trusted
    assert loading._assemble(loading._validated_rows(data)).stack("vllm-0.27.0").era == "torch 2.13 arrives"
    f.write_text(f.read_text().replace('era = "torch 2.13 arrives"', 'era = "torch 2.13.0 / Triton 3.7.1"'))
    assert loading._validated_rows(data) == first
    f.write_text(f.read_text().replace('era = "torch 2.13.0 / Triton 3.7.1"', 'era = ""'))
    with pytest.raises(KnowledgeError, match=r"stack 'vllm-0\.27\.0': era"):  # a bad file is never cached as good
        loading._validated_rows(data)


def test_cache_can_be_turned_off_and_survives_a_read_only_home(tmp_path, monkeypatch):
    from gptoss_doctor.knowledge import loading

    monkeypatch.setenv("GPTOSS_DOCTOR_CACHE", "")
    assert loading.cache_dir() is None
    assert loading._validated_rows(DATA_DIR)["stacks"]
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    monkeypatch.setenv("GPTOSS_DOCTOR_CACHE", str(blocked / "cache"))  # cannot be created
    assert loading._validated_rows(DATA_DIR)["releases"]
