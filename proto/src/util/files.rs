//! Files that hold keys: private directories, atomic private replacement, private
//! databases.

/// Make `dir` (and its missing parents) and keep it to its owner (0700): a daemon's
/// state directory holds its keys.
pub fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Replace `path` with `bytes`, readable by its owner only (0600): written to a
/// temporary file beside it, synced, renamed over it and the directory synced, so a
/// process killed at any moment leaves the old content or the new one, whole.
pub fn replace_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Keep a database file holding keys, and its WAL and shared-memory files, to its
/// owner (0600); SQLite makes the latter two with the database's mode, so this is
/// called right after the database is opened, before its first write.
pub fn private_database(db: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut all = vec![db.to_path_buf()];
    for suffix in ["-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        all.push(p.into());
    }
    for p in all.iter().filter(|p| p.exists()) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}
