"""Output files: checked before the work, written atomically with the user's permissions."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from streamrec.errors import StreamrecError
from streamrec.fsutil import atomic_write, atomic_write_text, check_output, save_figure


def test_check_output_accepts_a_writable_path(tmp_path):
    assert check_output("--out", tmp_path / "a.csv") == tmp_path / "a.csv"
    assert check_output("--plot", str(tmp_path / "a.PNG"), image=True) == tmp_path / "a.PNG"


@pytest.mark.parametrize("name, image, needle", [
    ("missing/a.csv", False, "the folder {tmp}/missing does not exist"),
    ("", False, "expected a file name, got the folder {tmp}"),
    ("plot.gif", True, "expected a file name ending in .png, .jpg, .jpeg, .svg, .pdf, got '.gif'"),
    ("plot", True, "got 'no suffix'"),
])
def test_check_output_names_the_option_and_the_problem(tmp_path, name, image, needle):
    with pytest.raises(StreamrecError) as info:
        check_output("--plot", tmp_path / name if name else tmp_path, image=image)
    assert str(info.value).startswith("--plot")
    assert needle.format(tmp=tmp_path) in str(info.value)


def test_a_new_file_gets_the_umask_permissions_and_a_replaced_one_keeps_its_own(tmp_path):
    old = os.umask(0o027)
    try:
        import streamrec.fsutil as fsutil

        saved, fsutil.UMASK = fsutil.UMASK, fsutil.read_umask()  # the module read the umask at import
        try:
            atomic_write_text(tmp_path / "new.txt", "x")
        finally:
            fsutil.UMASK = saved
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o640
    (tmp_path / "new.txt").chmod(0o604)
    atomic_write_text(tmp_path / "new.txt", "y")
    assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o604
    assert (tmp_path / "new.txt").read_text() == "y"


def test_a_read_only_file_is_not_replaced(tmp_path):
    """The folder's write permission would let the rename replace it: a 0444 file (for root too) stays."""
    target = tmp_path / "serve.toml"
    target.write_text("the admin's config\n")
    target.chmod(0o444)
    with pytest.raises(PermissionError) as info:
        atomic_write_text(target, "changed")
    assert (info.value.errno, info.value.filename) == (errno.EACCES, str(target))
    assert target.read_text() == "the admin's config\n" and sorted(p.name for p in tmp_path.iterdir()) == ["serve.toml"]


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file another user's owner takes root")
def test_a_replaced_file_keeps_its_owner_and_group(tmp_path):
    target = tmp_path / "serve.toml"
    target.write_text("x")
    os.chown(target, 1000, 1000)
    target.chmod(0o640)
    atomic_write_text(target, "y")
    st = target.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), target.read_text()) == (1000, 1000, 0o640, "y")


def test_a_failed_write_keeps_the_old_file_and_names_the_path(tmp_path):
    target = tmp_path / "model.ts"
    target.write_bytes(b"the old model")

    def disk_full(fh):
        fh.write(b"half a")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as info:
        atomic_write(target, disk_full)
    assert (info.value.errno, info.value.filename) == (errno.ENOSPC, str(target))
    assert target.read_bytes() == b"the old model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ts"]  # no temporary file left


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".svg", b"<?xml"), (".pdf", b"%PDF")])
def test_save_figure_writes_the_format_of_the_suffix(tmp_path, suffix, magic):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(2, 1))
    try:
        save_figure(fig, tmp_path / f"f{suffix}", dpi=50)
    finally:
        plt.close(fig)
    assert (tmp_path / f"f{suffix}").read_bytes().startswith(magic)


def test_check_output_refuses_to_write_over_an_input(tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"a video")
    (tmp_path / "sub").mkdir()
    with pytest.raises(StreamrecError) as info:
        check_output("--out", tmp_path / "sub" / ".." / "clip.mp4", inputs=(str(clip),))
    assert str(info.value) == (f"--out {tmp_path / 'sub' / '..' / 'clip.mp4'}: that is the input file {clip}; "
                               "writing there would replace it")
    assert check_output("--out", tmp_path / "clip.json", inputs=(str(clip),)) == tmp_path / "clip.json"
    assert clip.read_bytes() == b"a video"


@pytest.mark.parametrize("make, kind", [(lambda p: os.mkfifo(p), "a FIFO"),
                                        (lambda p: os.symlink("/dev/null", p), "a character device")])
def test_an_output_that_is_a_device_or_fifo_is_refused_and_left_as_it_is(tmp_path, make, kind):
    target = tmp_path / "out.csv"
    make(target)
    before = os.lstat(target)
    with pytest.raises(StreamrecError) as err:
        check_output("--out", target)
    assert str(err.value) == f"--out {target}: expected a regular file (or a new name), got {kind}"
    with pytest.raises(OSError) as err:
        atomic_write_text(target, "a,b\n")
    assert (err.value.filename, err.value.strerror) == (str(target), f"expected a regular file, got {kind}")
    after = os.lstat(target)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)


def test_an_output_that_is_a_link_is_written_through(tmp_path):
    (tmp_path / "real.csv").write_text("old\n")
    link = tmp_path / "out.csv"
    link.symlink_to("real.csv")
    assert check_output("--out", link) == tmp_path / "real.csv"
    atomic_write_text(link, "new\n")
    assert link.is_symlink() and (tmp_path / "real.csv").read_text() == "new\n"


def test_weights_that_are_a_fifo_are_named_as_such(tmp_path):
    from streamrec.errors import WeightsError
    from streamrec.validate import check_weights_arg

    os.mkfifo(tmp_path / "w.pt")
    with pytest.raises(WeightsError) as err:
        check_weights_arg(str(tmp_path / "w.pt"))
    assert str(err.value) == f"--weights: expected DEFAULT, none or a file, got {str(tmp_path / 'w.pt')!r} (not a regular file: a FIFO)"
    with pytest.raises(WeightsError, match=r"\(no such file\)$"):
        check_weights_arg(str(tmp_path / "missing.pt"))


def test_an_output_that_is_a_loop_of_links_is_one_line(tmp_path):
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(StreamrecError) as err:
        check_output("--out", tmp_path / "loop")
    assert str(err.value) == f"--out {tmp_path / 'loop'}: cannot write: too many levels of symbolic links"
    with pytest.raises(OSError) as err:
        atomic_write_text(tmp_path / "loop", "x")
    assert err.value.errno == errno.ELOOP
