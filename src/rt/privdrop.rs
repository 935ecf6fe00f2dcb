//! Dropping root after binding: `--user NAME` / `--group NAME`.
//!
//! [`resolve`] looks the names up (through NSS, `getpwnam_r`/`getgrnam_r`)
//! before anything is bound, so a typo is a clear startup error; [`apply`]
//! runs after every socket (listeners, admin) is bound and before any
//! worker or admin thread starts: `setgroups([])`, `setgid`, `setuid`, in
//! that order (the group calls need root), then checks that root cannot be
//! regained. glibc applies each of these to every thread of the process.

use std::ffi::CString;
use std::io;

/// Why the privilege drop failed. Each names the flag.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrivError {
    /// `--user` names no user.
    #[error("--user {0}: no such user")]
    NoUser(String),
    /// `--group` names no group.
    #[error("--group {0}: no such group")]
    NoGroup(String),
    /// Switching users needs root.
    #[error("{flag} {name}: switching user or group needs root (running as uid {euid})")]
    NotRoot {
        /// `--user` or `--group`.
        flag: &'static str,
        /// The name given.
        name: String,
        /// Our effective uid.
        euid: u32,
    },
    /// The user or group database could not be read.
    #[error("{flag} {name}: {source}")]
    Lookup {
        /// `--user` or `--group`.
        flag: &'static str,
        /// The name given.
        name: String,
        /// Why.
        source: io::Error,
    },
    /// A system call of the switch failed.
    #[error("--user/--group: {call} failed: {source}")]
    Switch {
        /// Which call.
        call: &'static str,
        /// Why.
        source: io::Error,
    },
}

/// The ids to switch to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The user id, when `--user` was given.
    pub uid: Option<u32>,
    /// The group id: `--group`'s, or `--user`'s primary group.
    pub gid: u32,
}

/// Looks up `user` and `group`. `Ok(None)` when neither is given.
pub fn resolve(user: Option<&str>, group: Option<&str>) -> Result<Option<Target>, PrivError> {
    let (flag, name) = match (user, group) {
        (None, None) => return Ok(None),
        (Some(u), _) => ("--user", u),
        (None, Some(g)) => ("--group", g),
    };
    let user_ids = match user {
        Some(u) => Some(
            lookup_user(u)
                .map_err(|source| PrivError::Lookup {
                    flag: "--user",
                    name: u.to_owned(),
                    source,
                })?
                .ok_or_else(|| PrivError::NoUser(u.to_owned()))?,
        ),
        None => None,
    };
    let group_id = match group {
        Some(g) => Some(
            lookup_group(g)
                .map_err(|source| PrivError::Lookup {
                    flag: "--group",
                    name: g.to_owned(),
                    source,
                })?
                .ok_or_else(|| PrivError::NoGroup(g.to_owned()))?,
        ),
        None => None,
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(PrivError::NotRoot {
            flag,
            name: name.to_owned(),
            euid,
        });
    }
    let gid = match (group_id, user_ids) {
        (Some(g), _) => g,
        (None, Some((_, primary))) => primary,
        (None, None) => unreachable!("one of user and group is given"),
    };
    Ok(Some(Target {
        uid: user_ids.map(|(uid, _)| uid),
        gid,
    }))
}

fn switch_err(call: &'static str) -> PrivError {
    PrivError::Switch {
        call,
        source: io::Error::last_os_error(),
    }
}

/// Switches the whole process (every thread) to `t`.
pub fn apply(t: &Target) -> Result<(), PrivError> {
    // SAFETY: a zero-length list with a null pointer is valid for
    // setgroups(2); glibc applies it to every thread.
    if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
        return Err(switch_err("setgroups"));
    }
    // SAFETY: setgid takes a plain id; glibc applies it to every thread.
    if unsafe { libc::setgid(t.gid) } != 0 {
        return Err(switch_err("setgid"));
    }
    if let Some(uid) = t.uid {
        // SAFETY: setuid takes a plain id; glibc applies it to every thread.
        if unsafe { libc::setuid(uid) } != 0 {
            return Err(switch_err("setuid"));
        }
    }
    // Check: the ids are what we asked, and root cannot come back.
    // SAFETY: these getters have no preconditions and cannot fail.
    let (ruid, euid, rgid, egid) = unsafe {
        (
            libc::getuid(),
            libc::geteuid(),
            libc::getgid(),
            libc::getegid(),
        )
    };
    let uid_ok = t.uid.is_none_or(|u| ruid == u && euid == u);
    if !uid_ok || rgid != t.gid || egid != t.gid {
        return Err(PrivError::Switch {
            call: "setuid/setgid",
            source: io::Error::other(format!(
                "ids are uid {ruid}/{euid} gid {rgid}/{egid} after the switch"
            )),
        });
    }
    if t.uid.is_some_and(|u| u != 0) {
        // SAFETY: setuid takes a plain id; it must fail now.
        if unsafe { libc::setuid(0) } == 0 {
            return Err(PrivError::Switch {
                call: "setuid",
                source: io::Error::other("root could be regained after the switch"),
            });
        }
    }
    Ok(())
}

/// Whether a `get*nam_r` error code means "no such entry" (see
/// getpwnam_r(3): several are used for that).
fn not_found(rc: libc::c_int) -> bool {
    matches!(rc, libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM)
}

/// The uid and primary gid of user `name`.
fn lookup_user(name: &str) -> io::Result<Option<(u32, u32)>> {
    let cname = CString::new(name).map_err(|_| io::Error::other("name contains NUL"))?;
    let mut buf: Vec<libc::c_char> = vec![0; 4096];
    loop {
        // SAFETY: `passwd` is plain data (integers and pointers); all-zero
        // is a valid value, and getpwnam_r overwrites it.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call: the NUL-terminated
        // name, the output struct, the scratch buffer with its true length,
        // and the result pointer. Strings in `pwd` point into `buf`, which
        // we do not read.
        let rc = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if result.is_null() {
            return if rc == 0 || not_found(rc) {
                Ok(None)
            } else {
                Err(io::Error::from_raw_os_error(rc))
            };
        }
        return Ok(Some((pwd.pw_uid, pwd.pw_gid)));
    }
}

/// The gid of group `name`.
fn lookup_group(name: &str) -> io::Result<Option<u32>> {
    let cname = CString::new(name).map_err(|_| io::Error::other("name contains NUL"))?;
    let mut buf: Vec<libc::c_char> = vec![0; 4096];
    loop {
        // SAFETY: `group` is plain data; all-zero is a valid value, and
        // getgrnam_r overwrites it.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: as in `lookup_user`: valid name, output struct, scratch
        // buffer with its true length, and result pointer.
        let rc = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut grp,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if result.is_null() {
            return if rc == 0 || not_found(rc) {
                Ok(None)
            } else {
                Err(io::Error::from_raw_os_error(rc))
            };
        }
        return Ok(Some(grp.gr_gid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_root_and_misses_nonsense() {
        assert_eq!(lookup_user("root").unwrap(), Some((0, 0)));
        assert_eq!(lookup_group("root").unwrap(), Some(0));
        assert_eq!(lookup_user("no-such-user-ringterm").unwrap(), None);
        assert_eq!(lookup_group("no-such-group-ringterm").unwrap(), None);
        assert!(matches!(
            resolve(Some("no-such-user-ringterm"), None),
            Err(PrivError::NoUser(_))
        ));
        assert!(matches!(
            resolve(None, Some("no-such-group-ringterm")),
            Err(PrivError::NoGroup(_))
        ));
        assert_eq!(resolve(None, None).unwrap(), None);
    }
}
