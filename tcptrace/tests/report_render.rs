//! Renders every chart of the checked-in recordings to PNG in headless Chromium and checks
//! the image is not blank. Needs the `chromium` package (`cargo xtask setup` installs it as a
//! test package); this test installs nothing and fails loudly without it.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

const BIN: &str = env!("CARGO_BIN_EXE_tcptrace");
const CHARTS: [&str; 5] = ["handshake", "teardown", "timeline", "states", "slowest"];

fn chromium() -> PathBuf {
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "headless Chromium is needed to render the charts: run `cargo xtask setup` (installs the Debian package `chromium`)"
    );
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tcptrace-render-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

/// Screenshots `svg` at 1200x800 into `png`.
fn screenshot(svg: &Path, png: &Path) {
    let profile = scratch(&format!(
        "profile-{}",
        svg.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1200,800",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", svg.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start chromium");
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            assert!(st.success(), "chromium failed on {}", svg.display());
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish {} within 90 s", svg.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_dir_all(&profile);
}

/// Pixels that differ clearly from the top-left (background) pixel.
fn ink_pixels(png: &Path) -> (usize, usize, u32, u32) {
    let decoder = png::Decoder::new(std::fs::File::open(png).expect("open png"));
    let mut reader = decoder.read_info().expect("png header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("png frame");
    let ch = info.color_type.samples();
    assert!(ch >= 3, "unexpected PNG colour type {:?}", info.color_type);
    let px = &buf[..info.buffer_size()];
    let bg = &px[..3];
    let ink = px
        .chunks_exact(ch)
        .filter(|p| p[..3].iter().zip(bg).any(|(a, b)| a.abs_diff(*b) > 40))
        .count();
    (ink, px.len() / ch, info.width, info.height)
}

#[test]
fn every_chart_renders_to_a_non_blank_png() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for name in ["loopback", "one-connection", "no-events"] {
        let dir = scratch(name);
        let st = Command::new(BIN)
            .arg("report")
            .arg(fixtures.join(format!("{name}.jsonl")))
            .arg("--svg")
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run tcptrace");
        assert!(st.success());
        for chart in CHARTS {
            let svg = dir.join(format!("{chart}.svg"));
            let png = dir.join(format!("{chart}.png"));
            screenshot(&svg, &png);
            let (ink, total, w, h) = ink_pixels(&png);
            assert_eq!((w, h), (1200, 800), "{name}/{chart}.png size");
            // Titles, axes and text alone are well over 0.5% of the image; a blank or
            // failed render (a white page) has none.
            assert!(
                ink * 200 > total,
                "{name}/{chart}.png looks blank: {ink} of {total} pixels differ from the background"
            );
            eprintln!("{name}/{chart}.png: {ink} of {total} pixels drawn");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
