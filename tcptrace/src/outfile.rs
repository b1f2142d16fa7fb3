//! Creating the files and directories tcptrace writes (recordings, `--summary-json`, `--svg`
//! charts, `export` output), so that they belong to whoever ran `sudo`: under sudo (root,
//! with SUDO_UID and SUDO_GID set) each file and each directory we create is handed to that
//! user and group right after it is created, while the tool still holds CAP_CHOWN; a file
//! that already existed is truncated and keeps its owner. Without sudo nothing changes hands.
//!
//! Live runs open all of their outputs before they drop their capabilities (see
//! `privileges`): root without CAP_DAC_OVERRIDE may not create files in a directory it does
//! not own, so files written at exit are created at start and written through the open file.
//! Nothing here imports the rest of the tool.

use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
};

/// The user and group to hand files to: SUDO_UID and SUDO_GID when running as root.
pub fn invoking_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    invoking_user_from(
        euid,
        std::env::var("SUDO_UID").ok().as_deref(),
        std::env::var("SUDO_GID").ok().as_deref(),
    )
}

/// [`invoking_user`] from its inputs: only root hands files over, only to a valid non-root
/// user and group.
fn invoking_user_from(euid: u32, uid: Option<&str>, gid: Option<&str>) -> Option<(u32, u32)> {
    if euid != 0 {
        return None;
    }
    let uid: u32 = uid?.trim().parse().ok()?;
    let gid: u32 = gid?.trim().parse().ok()?;
    (uid != 0).then_some((uid, gid))
}

/// Gives `path` to the user who ran sudo, if any. A failure is a warning: the file is
/// written all the same, owned by root.
pub fn hand_over(path: &Path) {
    if let Some((uid, gid)) = invoking_user() {
        warn_unless_handed(
            path,
            uid,
            gid,
            std::os::unix::fs::chown(path, Some(uid), Some(gid)),
        );
    }
}

fn warn_unless_handed(path: &Path, uid: u32, gid: u32, chowned: io::Result<()>) {
    if let Err(e) = chowned {
        log::warn!(
            "could not give {} to the sudo user {uid}:{gid} ({e}); it stays owned by root",
            path.display()
        );
    }
}

/// Creates (or truncates) a file for writing. A file this call creates goes to the sudo
/// user if any; one that already existed keeps its owner (`sudo tcptrace record -o
/// /var/log/x.tcpt` must not hand an existing file to the caller).
pub fn create(path: &Path) -> io::Result<File> {
    let file = match File::options().write(true).create_new(true).open(path) {
        Ok(file) => {
            // By descriptor: the file we created, whatever the path names by now.
            if let Some((uid, gid)) = invoking_user() {
                warn_unless_handed(
                    path,
                    uid,
                    gid,
                    std::os::unix::fs::fchown(&file, Some(uid), Some(gid)),
                );
            }
            file
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => File::create(path)?,
        Err(e) => return Err(e),
    };
    Ok(file)
}

/// Creates `dir` and its missing parents, each owned by the sudo user if any.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    let missing: Vec<PathBuf> = dir
        .ancestors()
        .take_while(|p| !p.as_os_str().is_empty() && !p.exists())
        .map(Path::to_path_buf)
        .collect();
    std::fs::create_dir_all(dir)?;
    for p in missing.iter().rev() {
        hand_over(p);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_under_sudo_hands_files_to_a_non_root_user() {
        assert_eq!(
            invoking_user_from(0, Some("1000"), Some("1001")),
            Some((1000, 1001))
        );
        // Not root: the files are the caller's anyway.
        assert_eq!(invoking_user_from(1000, Some("1000"), Some("1000")), None);
        // Root without sudo, sudo from root, or garbage: nothing changes hands.
        assert_eq!(invoking_user_from(0, None, None), None);
        assert_eq!(invoking_user_from(0, Some("1000"), None), None);
        assert_eq!(invoking_user_from(0, Some("0"), Some("0")), None);
        assert_eq!(invoking_user_from(0, Some("x"), Some("1000")), None);
    }
}
