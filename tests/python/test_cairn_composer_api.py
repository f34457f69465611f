"""cairn.composer.CheckpointSaver as a drop-in: arguments, defaults, validation, attributes, Trainer wiring.

Against the native extension (``pip install ./host/python``).
"""

import inspect
import os
import subprocess
import sys

import pytest

pytest.importorskip("composer")

import torch  # noqa: E402
from composer import Trainer  # noqa: E402
from composer.callbacks import CheckpointSaver as ComposerSaver  # noqa: E402
from composer.utils.compression import CompressorNotFound  # noqa: E402

import composer_harness as h  # noqa: E402
from conftest import SRC, native_available  # noqa: E402


@pytest.fixture
def native():
    if not native_available():
        pytest.skip("cairn._native is not built (pip install ./host/python)")
    import cairn
    return cairn._native


def CairnSaver(*a, **kw):
    from cairn.composer import CheckpointSaver
    return CheckpointSaver(*a, **kw)


def test_import_cairn_needs_neither_torch_nor_composer():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['composer'] = None; sys.modules['numpy'] = None\n"
            f"sys.path.insert(0, {SRC!r}); import cairn; print(cairn.__version__, cairn.PolicyError.__mro__[1].__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[1] == "RuntimeError"


def test_signature_is_composers_plus_config(native):
    from cairn.composer import CheckpointSaver

    theirs = inspect.signature(ComposerSaver.__init__).parameters
    ours = inspect.signature(CheckpointSaver.__init__).parameters
    assert list(ours)[:len(theirs)] == list(theirs)
    assert [p.kind for p in list(ours.values())[:len(theirs)]] == [p.kind for p in theirs.values()]
    assert list(ours)[len(theirs):] == ["async_save", "staging_budget_mib", "config"]


def test_defaults_and_attributes_match_composers(native):
    ref, ours = ComposerSaver(), CairnSaver()
    assert isinstance(ours, ComposerSaver)
    assert type(ours).__qualname__ == "CheckpointSaver"  # the key of state['callbacks']
    missing = set(vars(ref)) - set(vars(ours))
    assert not missing, f"attributes the Trainer or Composer code may read: {missing}"
    for attr in ("folder", "overwrite", "num_checkpoints_to_keep", "weights_only", "ignore_keys",
                 "num_concurrent_uploads", "upload_timeout_in_seconds", "saved_checkpoints", "remote_uploader",
                 "last_checkpoint_batch", "start_batch", "symlink_count", "rank_saves_symlinks"):
        assert getattr(ours, attr) == getattr(ref, attr), attr
    for attr in ("filename", "latest_filename", "remote_file_name", "latest_remote_file_name"):
        a, b = getattr(ref, attr), getattr(ours, attr)
        assert (a.filename, a.folder) == (b.filename, b.folder), attr
    assert callable(ours.save_interval)


@pytest.mark.parametrize("kwargs", [
    dict(folder="f", filename="a/{epoch}.pt", latest_filename=None, remote_file_name=None),
    dict(folder="/abs/ck", filename="/x.pt", latest_filename="/l.pt", latest_remote_file_name=None),
    dict(save_interval="3ba", overwrite=True, num_checkpoints_to_keep=2, weights_only=True),
    dict(ignore_keys=["state/optimizers/*"]),
    dict(save_interval=2),
])
def test_explicit_arguments_as_composer_stores_them(native, kwargs):
    ref, ours = ComposerSaver(**kwargs), CairnSaver(**kwargs)
    for attr in ("folder", "overwrite", "num_checkpoints_to_keep", "weights_only", "ignore_keys"):
        assert getattr(ours, attr) == getattr(ref, attr), attr
    for attr in ("filename", "latest_filename", "remote_file_name", "latest_remote_file_name"):
        a, b = getattr(ref, attr), getattr(ours, attr)
        assert (a is None) == (b is None), attr
        if a is not None:
            assert (a.filename, a.folder) == (b.filename, b.folder), attr


@pytest.mark.parametrize("interval", ["1.5ba", "nanep", "inf ep", "1hr", 1.5, object(), "ep"])
def test_bad_intervals_raise_what_composer_raises(native, interval):
    with pytest.raises(Exception) as theirs:
        ComposerSaver(save_interval=interval)
    with pytest.raises(type(theirs.value)):
        CairnSaver(save_interval=interval)


def test_unknown_compressor_is_compressor_not_found(native):
    with pytest.raises(CompressorNotFound):
        ComposerSaver(filename="x.pt.foo")
    with pytest.raises(CompressorNotFound):
        CairnSaver(filename="x.pt.foo")


def test_config_file_and_explicit_overrides(native, tmp_path):
    cfg = tmp_path / "job.toml"
    cfg.write_text('[checkpoint]\nfolder = "from-toml"\nsave_interval = "2ba"\nnum_checkpoints_to_keep = 3\n'
                   'latest_filename = false\n')
    s = CairnSaver(config=str(cfg), num_checkpoints_to_keep=1)
    assert s.folder == "from-toml"
    assert s.num_checkpoints_to_keep == 1  # explicit wins
    assert s.latest_filename is None       # TOML false = Composer None
    with pytest.raises(ValueError, match="nope"):
        bad = tmp_path / "bad.toml"
        bad.write_text("[checkpoint]\nnope = 1\n")
        CairnSaver(config=str(bad))


def test_trainer_treats_it_as_its_saver(native, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    saver = CairnSaver(folder="ck", save_interval="2ba")
    model = h.make_model()
    trainer = Trainer(model=model, train_dataloader=h.make_loader(16, 4), max_duration="1ep", callbacks=[saver],
                      save_folder=None, device="cpu", progress_bar=False, log_to_console=False, run_name="t")
    try:
        assert trainer._checkpoint_saver is saver
        trainer.fit()
        assert trainer.saved_checkpoints == ["ck/ep0-ba2-rank0.pt", "ck/ep0-ba4-rank0.pt"]
        trainer.save_checkpoint_to_save_folder()  # after fit: ep1-ba4 (the epoch counter moved)
        assert trainer.saved_checkpoints[-1] == "ck/ep1-ba4-rank0.pt"
        # The same name again: Composer silently rewrites the file; cairn never replaces a checkpoint
        # unless overwrite=True (a documented difference), and the history keeps the first save.
        with pytest.raises(FileExistsError):
            trainer.save_checkpoint_to_save_folder()
        assert list(saver.all_saved_checkpoints_to_timestamp) == trainer.saved_checkpoints
    finally:
        trainer.close()


def test_python_callables_run_in_process(native, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seen = []

    def every_third(state, event):
        seen.append(event)
        return int(state.timestamp.batch) % 3 == 0

    def drop_optimizer(ckpt):
        del ckpt["state"]["optimizers"]

    r = h.run(lambda **kw: CairnSaver(**{**kw, "save_interval": every_third, "ignore_keys": drop_optimizer}),
              save_interval=None, max_duration="2ep", samples=16, batch_size=4)
    assert [s[2] for s in r.saves] == [3, 6]  # callables get no end-of-training save (Composer quirk)
    assert "optimizers" not in h.load(r.saves[0][3])["state"]
    assert seen


def test_weights_only(native, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = h.run(lambda **kw: CairnSaver(**kw, weights_only=True), save_interval="1ep", max_duration="1ep", samples=8,
              batch_size=4)
    ckpt = h.load(r.saves[0][3])
    assert list(ckpt) == ["state"] and set(ckpt["state"]) == {"model", "integrations", "metadata"}
