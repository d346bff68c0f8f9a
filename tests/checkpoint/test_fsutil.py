"""Installing a finished folder never leaves the destination missing or half-written."""

import os

from checkpoint import fsutil


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_text() for p in root.rglob("*") if p.is_file()}


def test_install_swaps_in_the_new_folder_and_drops_the_old(tmp_path):
    dst = tmp_path / "engine"
    dst.mkdir()
    (dst / "a").write_text("old")
    new = fsutil.staging_dir(dst)
    (new / "a").write_text("new")
    fsutil.install_dir(new, dst)
    assert _tree(dst) == {"a": "new"} and [p.name for p in tmp_path.iterdir()] == ["engine"]


def test_install_without_atomic_exchange_falls_back(tmp_path, monkeypatch):
    monkeypatch.setattr(fsutil, "_exchange", lambda a, b: False)
    test_install_swaps_in_the_new_folder_and_drops_the_old(tmp_path)


def test_stale_staging_of_dead_processes_is_removed_and_a_stranded_old_copy_restored(tmp_path):
    dst = tmp_path / "engine"
    dead = 2**22 + 12345          # above pid_max on this kind of machine: no such process
    (tmp_path / f".engine.partial-{dead}-abcdef12").mkdir()
    old = tmp_path / f".engine.old-{dead}-abcdef12"
    old.mkdir()
    (old / "a").write_text("old")
    live = tmp_path / f".engine.partial-{os.getpid()}-abcdef12"
    live.mkdir()
    removed = fsutil.remove_stale_staging(dst)
    assert [p.name for p in removed] == [f".engine.partial-{dead}-abcdef12"]
    assert _tree(dst) == {"a": "old"} and live.is_dir()


def test_cache_dir_is_ours_else_xdg_else_home(tmp_path, monkeypatch):
    from model_repo.tokenizer import tiktoken_dir
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("GPTOSS_TRT_CACHE", str(tmp_path / "ours"))
    assert fsutil.cache_dir() == tmp_path / "ours"
    monkeypatch.setenv("GPTOSS_TRT_CACHE", "")          # empty counts as unset
    assert fsutil.cache_dir() == tmp_path / "xdg" / "gptoss-trt"
    monkeypatch.delenv("GPTOSS_TRT_CACHE")
    assert fsutil.cache_dir() == tmp_path / "xdg" / "gptoss-trt"
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    assert fsutil.cache_dir() == tmp_path / "home" / ".cache" / "gptoss-trt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert fsutil.cache_dir() == tmp_path / "home" / ".cache" / "gptoss-trt"
    # Its users follow it: the tokenizer vocabulary sits inside it.
    assert tiktoken_dir() == tmp_path / "home" / ".cache" / "gptoss-trt" / "tiktoken"
