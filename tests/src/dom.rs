//! Scratch folders and the report as a browser renders it.

use std::{fs, path::{Path, PathBuf}, process::Command};

use crate::target_dir;

/// A fresh scratch folder `target/tmp/<tag>-<pid>`.
pub fn tempdir(tag: &str) -> PathBuf {
    let d = target_dir().join("tmp").join(format!("{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

/// The DOM of `page` as headless Chromium renders it (`--dump-dom`), after asserting that the
/// page finished its script (`data-ready="1"`) without console errors.
pub fn rendered_dom(page: &Path) -> String {
    let profile = tempdir("chromium-profile");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("cannot run chromium: run `cargo xtask setup`");
    let _ = fs::remove_dir_all(&profile);
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chromium failed: {stderr}");
    assert!(dom.contains("data-ready=\"1\""), "{} did not finish its script:\n{stderr}", page.display());
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains(":CONSOLE") || l.contains("Uncaught")).collect();
    assert!(errors.is_empty(), "console errors in {}:\n{}", page.display(), errors.join("\n"));
    dom
}
