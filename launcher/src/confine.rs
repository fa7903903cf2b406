//! Confinement, the step between setting the guest up and running it: the launcher gives up
//! what it no longer needs.
//!
//! Setting a guest up takes privilege: opening /dev/lguest (root's, usually), the kernel, the
//! disk images and taps, raising the locked-memory limit. Running it takes none: from then on
//! the launcher reads and writes the files it already holds. But running it is when the launcher
//! meets the guest: every device register access, every descriptor, every buffer is the guest's
//! to choose, and a bug in the device code is the guest's way in. So, as lguest's launcher did
//! with `--chroot` and `--user`, the launcher first leaves the file system ([`enter_root`]:
//! chroot, then chdir to the new root, so no directory of the old one stays reachable), then
//! drops root for an unprivileged user ([`drop_to`]), and then (seccomp.rs) limits itself to the
//! system calls the run loop and device threads make. A guest that takes over the device code
//! holds an unprivileged process that can touch nothing but its own files.
//!
//! The user is looked up ([`Credentials::resolve`]) before anything is set up: a name that is
//! not a user is a mistake in the command line, and the user database may well not be inside
//! the new root.
//!
//! All of this happens in the guest's own process, which the launcher forked (supervise.rs) and
//! which is tied to it by [`end_with_supervisor`]: the launcher itself keeps its privilege, to
//! start the guest afresh when it reboots.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::path::Path;

use anyhow::{bail, ensure, Context};
use nix::sys::prctl;
use nix::sys::signal::Signal;
use nix::unistd::{
    getgrouplist, getgroups, getppid, getresgid, getresuid, setgid, setgroups, setuid, Gid, Pid,
    Uid, User,
};

/// Who the launcher becomes: `--user`'s USER[:GID], looked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub uid: Uid,
    pub gid: Gid,
    /// The supplementary groups, all of them: what setgroups is given.
    pub groups: Vec<Gid>,
}

impl Credentials {
    /// Reads `USER[:GID]`. USER is a name in the user database or a numeric UID. Without GID
    /// the user's own group and the groups the database lists it in are taken (initgroups, as
    /// lguest's launcher did); with GID, that group alone. A UID the database does not know has
    /// no groups to take, so it needs a GID.
    pub fn resolve(spec: &str) -> anyhow::Result<Credentials> {
        let (user, gid) = match spec.split_once(':') {
            Some((user, gid)) => (user, Some(gid)),
            None => (spec, None),
        };
        let gid = gid
            .map(|gid| {
                gid.parse()
                    .map(Gid::from_raw)
                    .map_err(|_| anyhow::anyhow!("--user {spec}: GID '{gid}' is not a number"))
            })
            .transpose()?;
        if user.is_empty() {
            bail!("--user wants USER or USER:GID, not '{spec}'");
        }
        let numeric = user.parse().ok().map(Uid::from_raw);
        let entry = match numeric {
            Some(uid) => User::from_uid(uid),
            None => User::from_name(user),
        }
        .with_context(|| format!("--user {spec}: cannot read the user database"))?;
        match (entry, gid, numeric) {
            (Some(entry), None, _) => {
                let name = CString::new(entry.name.as_str())?;
                let groups = getgrouplist(&name, entry.gid).with_context(|| {
                    format!("--user {spec}: cannot list {}'s groups", entry.name)
                })?;
                Ok(Credentials {
                    uid: entry.uid,
                    gid: entry.gid,
                    groups,
                })
            }
            (Some(User { uid, .. }), Some(gid), _) | (None, Some(gid), Some(uid)) => {
                Ok(Credentials {
                    uid,
                    gid,
                    groups: vec![gid],
                })
            }
            (None, None, Some(uid)) => bail!(
                "--user {spec}: UID {uid} is not in the user database, so say its group too \
                 (--user {uid}:GID)"
            ),
            (None, _, None) => bail!("--user {spec}: there is no user '{user}'"),
        }
    }
}

/// Makes `dir` the launcher's root directory, and its working directory (which would otherwise
/// stay outside, and with it the whole old tree). Needs CAP_SYS_CHROOT, so it comes before
/// [`drop_to`].
pub fn enter_root(dir: &Path) -> anyhow::Result<()> {
    std::os::unix::fs::chroot(dir)
        .with_context(|| format!("--chroot: cannot make {} the root directory", dir.display()))?;
    std::env::set_current_dir("/").context("--chroot: cannot change to the new root")
}

/// Becomes `who`: supplementary groups first, then the group, then the user, since each step
/// needs the privilege the next one gives up; then checks that all of it took, real, effective
/// and saved IDs alike, and that root cannot be had back.
pub fn drop_to(who: &Credentials) -> anyhow::Result<()> {
    setgroups(&who.groups).context("--user: cannot set the supplementary groups (setgroups)")?;
    setgid(who.gid).with_context(|| format!("--user: cannot become group {}", who.gid))?;
    setuid(who.uid).with_context(|| format!("--user: cannot become user {}", who.uid))?;

    let uids = getresuid()?;
    let gids = getresgid()?;
    ensure!(
        [uids.real, uids.effective, uids.saved] == [who.uid; 3]
            && [gids.real, gids.effective, gids.saved] == [who.gid; 3],
        "--user: after setuid and setgid the launcher is uid {}/{}/{} gid {}/{}/{}, not {}:{}",
        uids.real,
        uids.effective,
        uids.saved,
        gids.real,
        gids.effective,
        gids.saved,
        who.uid,
        who.gid
    );
    // Compared as sets: the kernel sorts the list setgroups gives it.
    let as_set = |groups: &[Gid]| -> BTreeSet<u32> { groups.iter().map(|g| g.as_raw()).collect() };
    let (groups, wanted) = (as_set(&getgroups()?), as_set(&who.groups));
    ensure!(
        groups == wanted,
        "--user: the launcher's groups are {groups:?}, not {wanted:?}"
    );
    ensure!(
        who.uid.is_root() || setuid(Uid::from_raw(0)).is_err(),
        "--user: the launcher could become root again"
    );
    Ok(())
}

/// Has the kernel send this process SIGTERM (which puts the terminal back before it ends the
/// launcher, terminal.rs) when its parent, the launcher's `supervisor` (supervise.rs), ends
/// (prctl's PR_SET_PDEATHSIG): a supervisor killed outright must not leave its guest running
/// with no one to wait for it. Comes after [`drop_to`], since a change of user or group clears
/// the setting; and fails if the supervisor has already gone.
pub fn end_with_supervisor(supervisor: Pid) -> anyhow::Result<()> {
    prctl::set_pdeathsig(Signal::SIGTERM).context("cannot follow the supervisor (prctl)")?;
    ensure!(
        getppid() == supervisor,
        "the launcher's supervisor (process {supervisor}) has gone"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(spec: &str) -> String {
        format!("{:#}", Credentials::resolve(spec).unwrap_err())
    }

    #[test]
    fn a_name_or_a_known_uid_brings_its_groups() {
        // Every Debian system has root, and root is in its own group.
        for spec in ["root", "0"] {
            let root = Credentials::resolve(spec).unwrap();
            assert_eq!((root.uid, root.gid), (Uid::from_raw(0), Gid::from_raw(0)));
            assert!(root.groups.contains(&Gid::from_raw(0)), "{root:?}");
        }
    }

    #[test]
    fn a_gid_given_is_the_only_group() {
        let who = Credentials::resolve("root:4321").unwrap();
        assert_eq!(
            (who.uid, who.gid, who.groups),
            (
                Uid::from_raw(0),
                Gid::from_raw(4321),
                vec![Gid::from_raw(4321)]
            )
        );
        let who = Credentials::resolve("3999999:4321").unwrap();
        assert_eq!(who.uid, Uid::from_raw(3_999_999));
        assert_eq!(who.groups, [Gid::from_raw(4321)]);
    }

    #[test]
    fn what_cannot_be_resolved_is_one_clear_line() {
        assert_eq!(
            error("3999999"),
            "--user 3999999: UID 3999999 is not in the user database, so say its group too \
             (--user 3999999:GID)"
        );
        assert_eq!(
            error("no-such-lguest-user"),
            "--user no-such-lguest-user: there is no user 'no-such-lguest-user'"
        );
        assert_eq!(
            error("root:wheel"),
            "--user root:wheel: GID 'wheel' is not a number"
        );
        assert_eq!(error(":0"), "--user wants USER or USER:GID, not ':0'");
        assert_eq!(error(""), "--user wants USER or USER:GID, not ''");
    }
}
