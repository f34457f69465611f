//! The saver's life with uploads: several fits on one saver, `close` (Composer's `post_close`),
//! what a failed upload does to training, and a `folder` given as a URL.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use cairn::policy::Timestamp;
use cairn::{CheckpointSaver, Error};

use crate::support::{config, fit, names};

fn remote_job(extra: &str) -> String {
    format!(
        "run_name = \"r\"\n[checkpoint]\nfolder = \"{{dir}}/ck\"\nsave_interval = \"1ba\"\n{extra}\n[remote]\nurl = \"file://{{dir}}/remote\"\n"
    )
}

/// Issue 11, item 7: the remote half outlives `fit_end`; a second `fit_start` .. `fit_end`
/// uploads its checkpoints too, and `close` ends it.
#[test]
fn a_second_fit_keeps_uploading_and_close_ends_the_saver() {
    let dir = tempfile::tempdir().unwrap();
    let mut saver = CheckpointSaver::new(&config(dir.path(), &remote_job(""))).unwrap();
    let end = fit(&mut saver, Timestamp::default(), "2ba").unwrap();
    assert_eq!(saver.fit_end().unwrap().unwrap().uploaded, 2);
    fit(&mut saver, end, "4ba").unwrap();
    let report = saver.fit_end().unwrap().unwrap();
    assert_eq!((report.uploaded, report.failed), (4, 0), "{report:?}");
    let remote = dir.path().join("remote/r/checkpoints");
    assert_eq!(names(&remote, "ep").len(), 4);
    assert_eq!(
        fs::read_to_string(remote.join("latest-rank0.pt.symlink")).unwrap(),
        "r/checkpoints/ep0-ba4-rank0.pt"
    );
    assert_eq!(saver.close().unwrap().unwrap().uploaded, 4);
    assert!(saver.close().unwrap().is_none(), "closing twice");
    assert!(matches!(
        saver.fit_start(&Timestamp::default()),
        Err(Error::Closed)
    ));
}

/// An object already in the store and `overwrite = false`: the upload fails at once, without
/// retries (not a transient error).
fn saver_whose_first_upload_fails(dir: &Path, on_failure: &str) -> CheckpointSaver {
    let taken = dir.join("remote/r/checkpoints/ep0-ba1-rank0.pt");
    fs::create_dir_all(taken.parent().unwrap()).unwrap();
    fs::write(&taken, b"someone else's").unwrap();
    let text = format!("{}on_failure = \"{on_failure}\"\n", remote_job(""));
    CheckpointSaver::new(&config(dir, &text)).unwrap()
}

fn wait_for_failure(saver: &CheckpointSaver) {
    let started = Instant::now();
    while saver.upload_report().unwrap().failed == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the upload never failed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Issue 11, item 8, Composer's default: the next event returns the upload's error, and so does
/// `fit_end`.
#[test]
fn with_on_failure_fail_the_next_event_returns_the_upload_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut saver = saver_whose_first_upload_fails(dir.path(), "fail");
    saver.fit_start(&Timestamp::default()).unwrap();
    let one = Timestamp::default().to_next_batch(1, 0, Default::default());
    saver
        .save(&one, cairn::policy::Event::Batch, || {
            Ok(crate::support::snapshot(1))
        })
        .unwrap();
    wait_for_failure(&saver);
    let err = fit(&mut saver, one, "3ba").unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::UploadsFailed(_)), "{message}");
    assert!(
        message.contains("ep0-ba1-rank0.pt") && message.contains("already exists"),
        "{message}"
    );
    assert_eq!(
        names(&dir.path().join("ck"), "ep"),
        ["ep0-ba1-rank0.pt"],
        "training stopped at the event after the failure"
    );
    // fit_end still reports it (a trainer that caught the error and went on to FIT_END).
    assert!(matches!(saver.fit_end(), Err(Error::UploadsFailed(f)) if f.len() == 1));
    saver.close().unwrap();
}

/// `on_failure = "warn"`: training goes on with a warning; `fit_end` returns the error.
#[test]
fn with_on_failure_warn_training_goes_on_and_fit_end_fails() {
    let dir = tempfile::tempdir().unwrap();
    let mut saver = saver_whose_first_upload_fails(dir.path(), "warn");
    saver.fit_start(&Timestamp::default()).unwrap();
    let one = Timestamp::default().to_next_batch(1, 0, Default::default());
    saver
        .save(&one, cairn::policy::Event::Batch, || {
            Ok(crate::support::snapshot(1))
        })
        .unwrap();
    wait_for_failure(&saver);
    fit(&mut saver, one, "3ba").unwrap();
    let warnings = saver.take_warnings();
    assert!(
        warnings.iter().any(|w| w.starts_with("upload failed:")),
        "{warnings:?}"
    );
    let Err(Error::UploadsFailed(failures)) = saver.fit_end() else {
        panic!("fit_end must return the failed upload");
    };
    assert_eq!(failures.len(), 1);
    assert_eq!(saver.upload_report().unwrap().uploaded, 2);
    saver.close().unwrap();
}

/// Issue 17, item 2: a `folder` given as a URL stages locally, names objects
/// `<url path>/<filename>`, and `close` removes the staging folder.
#[test]
fn a_url_folder_stages_locally_and_close_removes_the_staging() {
    let dir = tempfile::tempdir().unwrap();
    let text = "run_name = \"r\"\n[checkpoint]\nfolder = \"file://{dir}/store/u\"\nsave_interval = \"1ba\"\n";
    let mut saver = CheckpointSaver::new(&config(dir.path(), text)).unwrap();
    let staging = saver.folder().to_owned();
    assert!(staging.is_dir() && staging.starts_with(std::env::temp_dir()));
    fit(&mut saver, Timestamp::default(), "2ba").unwrap();
    saver.fit_end().unwrap();
    assert_eq!(names(&staging, "ep").len(), 2);
    saver.close().unwrap();
    assert!(!staging.exists(), "the staging folder outlived close");
    let store = dir.path().join("store/u");
    assert_eq!(
        names(&store, "ep"),
        ["ep0-ba1-rank0.pt", "ep0-ba2-rank0.pt"]
    );
    assert_eq!(
        fs::read_to_string(store.join("latest-rank0.pt.symlink")).unwrap(),
        "ep0-ba2-rank0.pt"
    );
}
