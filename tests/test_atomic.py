import os
import stat

import pytest

from dsenergy._atomic import write_atomically, write_text_atomically


def test_new_file_follows_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        write_text_atomically(tmp_path / "out.json", "{}\n")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out.json").stat().st_mode) == 0o644


def test_failed_write_keeps_old_file(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old", encoding="utf-8")

    def fail(stream):
        stream.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomically(path, fail)
    assert path.read_text(encoding="utf-8") == "old"
    assert sorted(item.name for item in tmp_path.iterdir()) == ["out.txt"]


def test_missing_folder_is_created(tmp_path):
    write_text_atomically(tmp_path / "a" / "b" / "out.txt", "text")
    assert (tmp_path / "a" / "b" / "out.txt").read_text(encoding="utf-8") == "text"
