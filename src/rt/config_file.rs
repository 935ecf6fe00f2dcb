//! The configuration as the binary loads it: the `--config` file read from
//! the disk with the flags on top, the CPUs this process may run on, and
//! `ringterm check`. Here, not in `main.rs`, so that tests reach them
//! without spawning the binary.

use crate::config::{Config, Layered, Settings};
use crate::tls::loader::LoadError;

/// The config file at `path` (if any: read, UTF-8, TOML; relative paths in
/// it taken from its folder) with `flags` on top. Errors are one line
/// naming `--config` and the file, or the file, line and column (also
/// kept for errors about the values it set: [`Layered::with_positions`]).
pub fn load_layered(path: Option<&str>, flags: Settings) -> Result<Layered, String> {
    let file = match path {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| format!("--config {path}: {e}"))?;
            let settings = Settings::from_toml_bytes(path, &bytes).map_err(|e| e.to_string())?;
            Some((path.to_owned(), settings, bytes))
        }
        None => None,
    };
    Ok(match file {
        Some((path, settings, bytes)) => Layered::new(Some((path, settings)), flags)
            .with_positions(&String::from_utf8_lossy(&bytes)),
        None => Layered::new(None, flags),
    })
}

/// A loading error on one line, naming the config file and key when the
/// file set the value, else the flag.
pub fn load_error(layered: &Layered, e: LoadError) -> String {
    match layered.place_of(e.flag) {
        Some(place) if e.path.is_empty() => format!("{place}: {}", e.message),
        Some(place) => format!("{place}: {}: {}", e.path, e.message),
        None => e.to_string(),
    }
}

/// The CPUs this process may run on (its affinity mask; CPU 0 when it
/// cannot be read).
pub fn allowed_cpus() -> Vec<usize> {
    let mut cpus: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    if cpus.is_empty() {
        cpus.push(0);
    }
    cpus
}

/// Loads and validates the configuration: [`load_layered`], then
/// [`Layered::validate`] against [`allowed_cpus`].
pub fn load(path: Option<&str>, flags: Settings) -> Result<Config, String> {
    load_layered(path, flags)?.validate(&allowed_cpus())
}

/// `ringterm check`: everything the server would load and bind
/// ([`super::reload::check`]), without serving. The text to print
/// (`configuration FILE: OK` and the summary), or the one error line.
pub fn check(path: Option<&str>, flags: Settings) -> Result<String, String> {
    use super::reload::CheckError;
    let layered = load_layered(path, flags)?;
    let config = layered.validate(&allowed_cpus())?;
    let summary = super::reload::check(&config).map_err(|e| match e {
        CheckError::Load(e) => load_error(&layered, e),
        CheckError::Other(msg) => msg,
    })?;
    let source = layered.file.as_deref().unwrap_or("(flags)");
    Ok(format!("configuration {source}: OK\n{summary}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_errors_name_the_file_and_key_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.toml");
        let p = path.to_str().unwrap();
        let missing = load_layered(Some(p), Settings::default()).unwrap_err();
        assert!(missing.starts_with(&format!("--config {p}: ")), "{missing}");
        std::fs::write(
            &path,
            "listen = [\"127.0.0.1:0\"]\nbackend = \"127.0.0.1:9\"\ncert = \"c.pem\"\nring-entries = 100\n",
        )
        .unwrap();
        let err = load(Some(p), Settings::default()).unwrap_err();
        assert_eq!(
            err,
            format!("{p}:4:16: ring-entries: 100 must be a power of two from 8 to 32768")
        );
        let flags = Settings {
            ring_entries: Some(64),
            ..Settings::default()
        };
        let c = load(Some(p), flags).unwrap();
        assert_eq!(c.settings.ring_entries(), 64);
        // `check` reads the certificate: its error names the file, the
        // line and column and the key,
        // and the path is taken from the file's folder.
        let cert = dir.path().join("c.pem");
        std::fs::write(
            &path,
            "listen = [\"127.0.0.1:0\"]\nbackend = \"127.0.0.1:9\"\ncert = \"c.pem\"\n",
        )
        .unwrap();
        let err = check(Some(p), Settings::default()).unwrap_err();
        assert!(
            err.starts_with(&format!("{p}:3:8: cert: {}", cert.display())),
            "{err}"
        );
    }
}
