//! The web UI in a real browser: `tests/ui/ui.test.mjs` drives Debian's Chromium through
//! playwright-core against a live daemon (login with a password and with TOTP, the
//! create-VM wizard booting the tiny guest, serial and VNC consoles, graphs, snapshots,
//! HA, upload, access control, delete), checks every screen with axe-core and saves a
//! screenshot of each under `target/ui-screenshots/`.

mod common;

use common::{free_port, tiny_guest, Daemon};

#[test]
fn the_web_ui_does_a_days_work_in_a_real_browser() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(
        root.join("tests/ui/node_modules/playwright-core").exists(),
        "playwright-core is not installed in tests/ui: run scripts/deps.sh (it runs npm ci there)"
    );
    assert!(std::path::Path::new("/usr/bin/chromium").exists(), "no /usr/bin/chromium: run scripts/deps.sh");
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let d =
        Daemon::start(tmp.path(), port, &[("HORCRUX_ACCEL", "tcg"), ("HORCRUX_METRICS_INTERVAL_MS", "1000")]);
    let api = d.client();
    let shots = root.join("target/ui-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let out = std::process::Command::new("node")
        .arg(root.join("tests/ui/ui.test.mjs"))
        .env("HORCRUX_URL", format!("https://127.0.0.1:{port}"))
        .env("HORCRUX_ADMIN_TOKEN", format!("PVEAPIToken=root@pam!admin={}", api.token()))
        .env("HORCRUX_TINY_GUEST", tiny_guest())
        .env("SCREENSHOT_DIR", &shots)
        .output()
        .expect("node runs (scripts/deps.sh installs it)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "the browser test failed:\n{text}\n--- daemon log:\n{}", d.log());
    let pngs = std::fs::read_dir(&shots)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "png"))
        .count();
    assert!(pngs >= 12, "a screenshot of every screen: {pngs} in {}", shots.display());
}
