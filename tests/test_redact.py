"""URL credentials: one redaction for the doctor and the deploys (mirror URLs may carry a token
as user name or password; a report, a manifest or an error line must show neither)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gptoss_doctor.redact import MASK, redact_url

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "deploys"))


@pytest.mark.parametrize("url, secrets, kept", [
    ("https://user:s3cret@mirror.local:8443/simple?x=1", ("user", "s3cret"), "mirror.local:8443/simple?x=1"),
    ("https://tok3nvalue@mirror.local/simple", ("tok3nvalue",), "mirror.local/simple"),
    ("http://:only-pw@10.0.0.5/pypi", ("only-pw",), "10.0.0.5/pypi"),
])
def test_redact_url_drops_all_userinfo_and_keeps_where(url, secrets, kept):
    got = redact_url(url)
    assert all(s not in got for s in secrets), got
    assert got.startswith(url.split("://")[0] + f"://{MASK}@") and got.endswith(kept), got


@pytest.mark.parametrize("url", ["https://pypi.org/simple", "http://127.0.0.1:8700/pypi/simple/", "not a url"])
def test_redact_url_leaves_a_url_without_credentials_alone(url):
    assert redact_url(url) == url


def test_wheelhouse_download_error_names_the_mirror_without_its_password(tmp_path):
    from gptoss_deploy import wheelhouse

    # Port 9 (discard) refuses on loopback: a real failed download, no server needed.
    url = "http://fleet:s3cret@127.0.0.1:9/x-1.0-py3-none-any.whl"
    with pytest.raises(wheelhouse.WheelhouseError) as e:
        wheelhouse.download(url, "", tmp_path / "x-1.0-py3-none-any.whl")
    text = str(e.value)
    assert "s3cret" not in text and "fleet" not in text
    assert f"{MASK}@127.0.0.1:9/x-1.0-py3-none-any.whl" in text


@pytest.mark.parametrize("text, secret", [
    ("GITHUB=ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8", "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"),
    ("https://github.com/x.git token github_pat_11ABCDEFG0abcdefghij_klmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUV",
     "11ABCDEFG0abcdefghij_klmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUV"),
    ("clone with gho_" + "z" * 36 + " then", "z" * 36),
])
def test_github_tokens_are_masked_like_the_other_secrets(text, secret):
    from gptoss_doctor.redact import redact_text, redact_tree

    assert secret not in redact_text(text) and MASK in redact_text(text)
    assert secret not in str(redact_tree({"note": text, "argv": ["x", text]}))


def test_words_that_only_start_like_a_token_stay():
    from gptoss_doctor.redact import redact_text

    assert redact_text("ghp_short and github_pat_ alone") == "ghp_short and github_pat_ alone"
