//! The embedded default store, `file://DIR`: no server, same uploader, same pointer, same resume.

mod common;

use std::time::Duration;

use cairn::remote::{RemoteStore, UploadJob, UploadOptions, Uploader, download_latest};
use common::{MIB, within, write_file};

#[test]
fn file_store_uploads_points_and_resumes_without_a_server() {
    within(Duration::from_secs(60), || {
        let tmp = tempfile::tempdir().unwrap();
        let remote_dir = tmp.path().join("remote");
        let url = format!("file://{}", remote_dir.display());
        let store = RemoteStore::from_url(&url).unwrap();
        let local = tmp.path().join("checkpoints");
        let (p1, _) = write_file(&local, "ep1.pt", 1000, 1);
        let (p2, d2) = write_file(&local, "ep2.pt", 10 * MIB + 1, 2);
        let uploader = Uploader::new(
            store.clone(),
            UploadOptions {
                num_concurrent_uploads: 2,
                timeout: Duration::from_secs(30),
                ..UploadOptions::default()
            },
        )
        .unwrap();
        for (seq, p) in [&p1, &p2].into_iter().enumerate() {
            let name = format!("run/{}", p.file_name().unwrap().to_string_lossy());
            uploader
                .enqueue(UploadJob {
                    local_path: p.clone(),
                    object_name: name,
                    latest_pointer: Some("run/latest-rank0.pt".into()),
                    sequence: seq as u64,
                })
                .unwrap();
        }
        let report = uploader.finish();
        assert_eq!((report.uploaded, report.failed), (2, 0), "{report:?}");
        assert_eq!(std::fs::read(remote_dir.join("run/ep2.pt")).unwrap(), d2);
        assert_eq!(
            std::fs::read(remote_dir.join("run/latest-rank0.pt.symlink")).unwrap(),
            b"run/ep2.pt"
        );
        std::fs::remove_dir_all(&local).unwrap();
        let got = download_latest(&store, "run/latest-rank0.pt", &local)
            .unwrap()
            .unwrap();
        assert_eq!(std::fs::read(got).unwrap(), d2);
    });
}
