"""Device profiles: built-ins load, user files are found, bad files get clear errors."""

from __future__ import annotations

import pytest

from edgefold.errors import EdgefoldError
from edgefold.targets.profiles import available_profiles, load_profile


def test_host_profile_is_detected():
    profile = load_profile("host")
    assert profile.tvm_target["kind"] == "llvm"
    assert profile.tvm_target["mcpu"] != "detect"
    assert profile.cores >= 1


def test_user_profile_folder(tmp_path, monkeypatch, cli):
    (tmp_path / "board.toml").write_text(
        'description = "my board"\ncores = 4\n[tvm_target]\nkind = "llvm"\n[dram]\nsize_gb = 2\nbandwidth_gbps = 6\n')
    monkeypatch.setenv("EDGEFOLD_PROFILES", str(tmp_path))
    assert "board" in available_profiles()
    assert load_profile("board").dram.size_gb == 2
    result = cli("targets")
    assert result.code == 0 and "board" in result.out and "host" in result.out


@pytest.mark.parametrize("body, needle", [
    ("cores = 4\n", "tvm_target"),
    ('cores = 0\n[tvm_target]\nkind = "llvm"\n[dram]\nsize_gb = 2\nbandwidth_gbps = 6\n', "cores"),
    ('cores = 4\n[tvm_target]\nkind = "llvm"\n[dram]\nsize_gb = 2\nbandwidth_gbps = 6\nweight_formats = ["int3"]\n',
     "weight_formats"),
    ("cores = [\n", "not valid TOML"),
])
def test_bad_profile(tmp_path, body, needle):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(EdgefoldError, match=needle):
        load_profile(str(path))
