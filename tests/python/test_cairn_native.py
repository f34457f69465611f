"""The native module's boundary: errors arrive as the Python exceptions a user acts on, a Rust panic
as ``cairn.InternalError`` (never an abort or a bare ``PanicException``), and a failed upload stops
training at the next batch as Composer's does."""

import os

import pytest

from conftest import needs_native

pytestmark = needs_native

TS = (0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0.0, 0.0, 0.0, 0.0)


@pytest.mark.parametrize("detach", [False, True], ids=["gil-held", "gil-released"])
def test_a_panic_becomes_internal_error(detach):
    import cairn

    with pytest.raises(cairn.InternalError, match="internal error.*boom at 42") as e:
        cairn._native._panic_for_tests("boom at 42", detach)
    assert isinstance(e.value, RuntimeError) and not isinstance(e.value, cairn.PolicyError)
    assert sum(range(10)) == 45  # the interpreter carries on, with the GIL


def test_config_errors_are_value_errors_naming_the_key_or_line(tmp_path):
    from cairn import _native as n

    bad = tmp_path / "job.toml"
    bad.write_text('[checkpoint]\nfolder = "ck"\nsave_interval = "1"\n')
    with pytest.raises(ValueError, match=r"job\.toml:3:17: checkpoint\.save_interval: '1'"):
        n.Config(str(bad))
    for key, value, needle in [
        ("save_interval", "1.5ba", "checkpoint.save_interval"),
        ("overwrite", "yes", "checkpoint.overwrite: invalid type: string \"yes\", expected a boolean (keyword argument overwrite='yes')"),
        ("folder", "ck/{epoch}", "checkpoint.folder"),
        ("num_concurrent_uploads", 0, "checkpoint.num_concurrent_uploads"),
        ("folder", None, "checkpoint.folder=None"),
        ("nope", 1, "checkpoint.nope=1"),
    ]:
        with pytest.raises(ValueError, match=re_escape(needle)):
            n.Config(None, checkpoint={key: value})
    # A keyword overrides the file's key; [train] (cairn run's) is accepted and ignored.
    good = tmp_path / "ok.toml"
    good.write_text('run_name = "r"\n[checkpoint]\nsave_interval = "2ba"\n[train]\nmodel_mib = 1\n')
    c = n.Config(str(good), checkpoint={"save_interval": 3, "latest_filename": None})
    assert c.checkpoint()["save_interval"] == 3 and c.checkpoint()["latest_filename"] is None
    assert (c.run_name, c.remote_url) == ("r", None)


def re_escape(s):
    import re

    return re.escape(s)


def test_save_errors_are_value_file_exists_and_os_errors(tmp_path):
    import torch

    from cairn import _native as n
    from cairn import _pickle

    (tmp_path / "a-file").write_text("")
    blocked = n.Saver(n.Config(None, checkpoint={"folder": str(tmp_path / "a-file" / "ck")}), run_name="r")
    with pytest.raises(NotADirectoryError) as e:
        blocked.fit_start(TS)
    assert e.value.filename == str(tmp_path / "a-file" / "ck")

    saver = n.Saver(n.Config(None, checkpoint={"folder": str(tmp_path / "ck")}), run_name="r")
    saver.fit_start(TS)
    sk = _pickle.dumps({"state": {"w": torch.ones(3)}})
    args = (TS, "batch", sk.pickle, [r.as_tuple() for r in sk.storages])
    with pytest.raises(ValueError, match="is not the name checkpoint.filename"):
        saver.save(str(tmp_path / "ck" / "other.pt"), *args)
    path = saver.render("filename", TS)
    result = saver.save(path, *args)
    assert (result.path, result.deleted) == (path, []) and result.bytes == os.path.getsize(path)
    with pytest.raises(FileExistsError, match="already exists"):
        saver.save(path, *args)
    with pytest.raises(ValueError, match="storage key"):
        saver.save(path, TS, "batch", sk.pickle, [("../x", None, 0, 0)])
    assert saver.saved_checkpoints() == [path]
    assert torch.equal(torch.load(path, weights_only=True)["state"]["w"], torch.ones(3))


def test_a_failed_upload_stops_training_at_the_next_batch(tmp_path, monkeypatch):
    """Composer re-raises a failed upload at the next batch_end (remote_uploader.check_workers); so
    does cairn (its [remote] on_failure = "fail" default): here the object is already in the store
    and overwrite is false."""
    pytest.importorskip("composer")
    import composer_harness as h
    from cairn.composer import CheckpointSaver

    monkeypatch.chdir(tmp_path)
    (tmp_path / "remote" / "up" / "checkpoints").mkdir(parents=True)
    (tmp_path / "remote" / "up" / "checkpoints" / "ep0-ba2-rank0.pt").write_bytes(b"someone else's")
    config = tmp_path / "job.toml"
    config.write_text(f'[remote]\nurl = "file://{tmp_path}/remote"\n')
    with pytest.raises(RuntimeError, match=r"up/checkpoints/ep0-ba2-rank0\.pt.*already exists") as e:
        h.run(lambda **kw: CheckpointSaver(**kw, config=str(config)), save_interval="2ba", max_duration="2ep",
              samples=16, batch_size=4, run_name="up")
    assert (tmp_path / "remote" / "up" / "checkpoints" / "ep0-ba2-rank0.pt").read_bytes() == b"someone else's"
    assert "upload failed" in str(e.value)
