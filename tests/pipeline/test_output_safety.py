"""No file of the user's is ever deleted or overwritten: the output-folder rule, for every command.

Every case works inside pytest's tmp_path; "home" and "the working folder" are tmp_path
folders made so by monkeypatching HOME and chdir.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


COMPRESS = ("compress", "digits-cnn", "--pass", "cleanup", "--no-eval")


def _one_error_line(result, *needles: str) -> str:
    assert result.code == 2, (result.code, result.err[-2000:])
    lines = [line for line in result.err.strip().splitlines() if line.startswith("edgefold: error:")]
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _user_folder(root: Path) -> dict[str, str]:
    """A folder with the user's own things in it; returns what must survive."""
    (root / "src").mkdir(parents=True)
    (root / "src" / "main.py").write_text("print('mine')\n")
    (root / "notes.txt").write_text("my notes\n")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return _snapshot(root)


def _snapshot(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def _no_staging_left(parent: Path) -> None:
    assert not [p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_working_folder_is_refused(cli, tmp_path, monkeypatch, digits_onnx):
    project = tmp_path / "project"
    before = _user_folder(project)
    monkeypatch.chdir(project)
    _one_error_line(cli(*COMPRESS, "-o", "."), "refusing", "working folder")
    assert _snapshot(project) == before
    _no_staging_left(project.parent)


def test_home_folder_is_refused(cli, tmp_path, monkeypatch, digits_onnx):
    home = tmp_path / "home"
    before = _user_folder(home)
    monkeypatch.setenv("HOME", str(home))
    _one_error_line(cli(*COMPRESS, "-o", home), "refusing", "home folder")
    _one_error_line(cli(*COMPRESS, "-o", home.parent), "refusing", "home folder")  # a folder above it
    assert _snapshot(home) == before


def test_foreign_folder_file_and_symlink_are_refused(cli, tmp_path, digits_onnx):
    project = tmp_path / "project"
    before = _user_folder(project)
    _one_error_line(cli(*COMPRESS, "-o", project), "not empty", str(project))
    _one_error_line(cli(*COMPRESS, "-o", project / "notes.txt"), "is a file")
    (tmp_path / "link").symlink_to(project, target_is_directory=True)
    _one_error_line(cli(*COMPRESS, "-o", tmp_path / "link"), "symbolic link")
    (tmp_path / "filelink").symlink_to(project / "notes.txt")
    _one_error_line(cli(*COMPRESS, "-o", tmp_path / "filelink"), "symbolic link")
    _one_error_line(cli(*COMPRESS, "-o", project / "notes.txt" / "out"), "is a file")
    assert _snapshot(project) == before
    assert (tmp_path / "link").is_symlink() and (tmp_path / "filelink").is_symlink()
    _no_staging_left(tmp_path)


def test_compressing_a_model_into_its_own_foreign_folder_is_refused(cli, tmp_path, digits_onnx):
    import shutil

    folder = tmp_path / "mine"
    folder.mkdir()
    shutil.copy(digits_onnx, folder / "model.onnx")
    data = digits_onnx.with_name("model.onnx.data")
    if data.exists():
        shutil.copy(data, folder / "model.onnx.data")
    (folder / "keep.txt").write_text("keep")
    before = _snapshot_bytes(folder)
    _one_error_line(cli("compress", folder / "model.onnx", "--pass", "cleanup", "--no-eval", "-o", folder),
                    "not empty")
    assert _snapshot_bytes(folder) == before


def _snapshot_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_own_folder_is_replaced_and_other_files_need_force(cli, tmp_path, digits_onnx):
    out = tmp_path / "out"
    assert cli(*COMPRESS, "-o", out).code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["written_by"] == "edgefold"
    assert cli(*COMPRESS, "--pass", "quantize:format=int8", "-o", out).code == 0  # a rebuild replaces it
    assert [p["name"] for p in json.loads((out / "manifest.json").read_text())["passes"]] == ["cleanup", "quantize"]
    (out / "mine.txt").write_text("mine")
    _one_error_line(cli(*COMPRESS, "-o", out), "mine.txt", "--force")
    assert (out / "mine.txt").read_text() == "mine"
    assert cli(*COMPRESS, "-o", out, "--force").code == 0  # edgefold's files replaced, the user's kept
    assert (out / "mine.txt").read_text() == "mine"
    assert [p["name"] for p in json.loads((out / "manifest.json").read_text())["passes"]] == ["cleanup"]
    _no_staging_left(tmp_path)


def test_empty_folder_is_used(cli, tmp_path, digits_onnx):
    out = tmp_path / "empty"
    out.mkdir()
    assert cli(*COMPRESS, "-o", out).code == 0
    assert (out / "model.onnx").exists()


def test_every_command_follows_the_rule(cli, tmp_path, digits_onnx):
    """export, build (recipe output), compile, simulate and search refuse a foreign folder
    before doing any work."""
    project = tmp_path / "project"
    before = _user_folder(project)
    _one_error_line(cli("export", "digits-cnn", "-o", project), "not empty")
    _one_error_line(cli("compile", digits_onnx, "--trials", "0", "-o", project), "not empty")
    _one_error_line(cli("simulate", "digits-cnn", "-o", project), "not empty")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f'model = "{digits_onnx}"\noutput = "project"\n[[passes]]\nname = "cleanup"\n'
                      '[compile]\nenabled = false\n')
    _one_error_line(cli("build", recipe), "not empty")
    search = tmp_path / "search.toml"
    search.write_text(f'model = "{digits_onnx}"\noutput = "project"\n[[passes]]\nname = "cleanup"\n'
                      '[compile]\nenabled = false\n[search]\ngrid = { "cleanup.fuse_batchnorm" = [false, true] }\n'
                      'cost = "file_mb"\n')
    _one_error_line(cli("search", search), "not empty")
    assert _snapshot(project) == before


def test_export_copy_is_an_edgefold_folder(cli, tmp_path, digits_onnx):
    out = tmp_path / "exported"
    assert cli("export", "digits-cnn", "-o", out).code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["written_by"] == "edgefold" and "model.onnx" in manifest["files"]
    assert cli("export", "digits-cnn", "-o", out).code == 0  # its own folder: replaced


def test_stale_staging_of_a_killed_run_is_cleaned_but_nothing_else(cli, tmp_path, digits_onnx):
    from edgefold.atomic import STAGING_MARKER

    dead = _dead_pid()
    stale = tmp_path / f".out.tmp-{dead}-abc123"
    stale.mkdir()
    (stale / STAGING_MARKER).touch()
    (stale / "model.onnx").write_text("half written")
    unmarked = tmp_path / f".out.tmp-{dead}-zzz999"  # looks alike, but no marker: not ours
    unmarked.mkdir()
    (unmarked / "data").write_text("someone's")
    alive = tmp_path / f".out.tmp-{os.getpid()}-live"  # this very process: in use
    alive.mkdir()
    (alive / STAGING_MARKER).touch()
    assert cli(*COMPRESS, "-o", tmp_path / "out").code == 0
    assert not stale.exists()
    assert (unmarked / "data").read_text() == "someone's"
    assert alive.exists()


def test_stale_cache_leftovers_are_cleaned_at_start(cli, tmp_path, monkeypatch):
    from edgefold.atomic import STAGING_MARKER

    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGEFOLD_CACHE", str(cache))
    dead = _dead_pid()
    leftovers = [cache / "work" / f"build-{dead}-x1", cache / "exports" / f".digits-cnn-abc.tmp-{dead}-y2",
                 cache / "compiled" / f".0123.tmp-{dead}-z3"]
    for folder in leftovers:
        folder.mkdir(parents=True)
        (folder / STAGING_MARKER).touch()
    assert cli("passes").code == 0
    assert not any(folder.exists() for folder in leftovers)


def _dead_pid() -> int:
    """A process id that no running process has."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_safe_name():
    from edgefold.safe_names import safe_name

    assert safe_name("smollm2-135m") == "smollm2-135m"  # ordinary names unchanged
    for hostile in ("../../x/victim", "/etc/passwd", "..", ".", "", "a/b", "x" * 500, "-rf", "名前", "a\0b"):
        name = safe_name(hostile)
        assert name and name not in (".", "..") and "/" not in name and "\0" not in name
        assert not name.startswith((".", "-")) and len(name) <= 64
        assert Path(name).name == name
    assert safe_name("a/b") != safe_name("a-b")  # changed names carry a hash: no collisions
    assert safe_name("../../x/victim") == safe_name("../../x/victim")  # deterministic


def test_crafted_model_name_stays_inside_the_cache(cli, tmp_path, monkeypatch, digits_onnx):
    import onnx

    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGEFOLD_CACHE", str(cache))
    victim = tmp_path / "x" / "victim-host"
    victim.mkdir(parents=True)
    (victim / "precious.txt").write_text("precious")
    model = onnx.load(str(digits_onnx))
    for prop in model.metadata_props:
        if prop.key == "edgefold.model":
            prop.value = "../../x/victim"
    crafted = tmp_path / "crafted.onnx"
    onnx.save(model, str(crafted))
    monkeypatch.chdir(tmp_path)
    result = cli("compress", crafted, "--pass", "cleanup", "--no-eval", "-o", tmp_path / "out")
    assert result.code == 0, result.err
    assert (victim / "precious.txt").read_text() == "precious"
    exports = cache / "exports"
    assert all(p.parent == exports for p in exports.iterdir())
    assert not (tmp_path / "victim").exists() and not (cache / "x").exists()
    result = cli("compile", crafted, "--trials", "0", "--no-check")  # default output: dist/<model>-<profile>
    assert result.code == 0, result.err
    [folder] = list((tmp_path / "dist").iterdir())
    assert folder.name.startswith("x-victim-") and folder.name.endswith("-host"), folder.name
    assert (victim / "precious.txt").read_text() == "precious"
