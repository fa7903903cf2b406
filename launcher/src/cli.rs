//! The command line: `lguest-launcher [OPTIONS] <MEM> <KERNEL> [CMDLINE]...`, as clap reads it
//! and as the launcher checks it, before any file is opened or any memory mapped.
//!
//! The kernel's words come last and may look like anything, so once a word after KERNEL is not
//! an option, clap takes it and every word after it as the kernel's: `--block d.img` typed there
//! would silently be two more kernel words, and the guest would get no disk. [`Args::check`]
//! refuses a kernel word that is one of the launcher's own options instead, unless a `--` comes
//! before it. Every mistake in the command line is one line on stderr and exit code [`USAGE`]
//! (clap's own errors exit with the same code, in clap's words).
//!
//! The exit codes are here too, with `--help`'s list of them: a script running a guest must be
//! able to tell a guest that died from a launcher that could not start one.

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{CommandFactory, Parser};

use crate::size::parse_mem_size;
use crate::virtio::Mac;

/// Exit code: the guest powered off.
pub const POWERED_OFF: u8 = 0;
/// Exit code: the launcher failed: a file, /dev/lguest, a device. Anything that is not the
/// guest's doing nor the command line's.
pub const LAUNCHER_ERROR: u8 = 1;
/// Exit code: the command line is refused (clap's usage-error code, for its errors too).
pub const USAGE: u8 = 2;
/// Exit code: the guest died. The host killed it for breaking a rule, or it touched a device in
/// a way the launcher cannot serve; either way, what went wrong is in the guest.
pub const GUEST_DIED: u8 = 3;
/// Exit code: the guest asked to restart, and `--no-reboot` said not to. Not 0: a kernel that
/// panics with `panic=N` restarts, and a script must not take that for a clean power-off. (It is
/// also how the guest's process tells the launcher to start a fresh one: supervise.rs.)
pub const GUEST_REBOOTED: u8 = 4;
/// Exit code: the user typed the escape key (Ctrl-A x) on the launcher's terminal. Not 0: the
/// guest did not power off, it was stopped where it was (terminal.rs).
pub const QUIT: u8 = 5;

/// What `--help` says after the options. A unit test checks the exit codes against the
/// constants above.
const AFTER_HELP: &str = "\
Options go before MEM: the words after KERNEL are the kernel's, and one of them that is an
option of the launcher's is refused rather than quietly handed to the kernel. After `--` any
word is handed on (a `--` right after KERNEL is dropped; a later one reaches the kernel too,
which gives the words after it to init).

Exit status:
  0  the guest powered off
  1  the launcher failed: a file, /dev/lguest (is lg.ko loaded?), a device
  2  the command line is wrong
  3  the guest died: lg.ko killed it for breaking a rule, or it touched a device in a way the
     launcher cannot serve; the reason is on stderr
  4  the guest rebooted, under --no-reboot (otherwise the launcher starts it afresh, as a
     real machine would)
  5  the user quit: Ctrl-A x typed on the launcher's terminal

The console: a terminal on stdin is raw while the guest runs, so every key reaches the guest,
Ctrl-C and Ctrl-Z included. The escape key is Ctrl-A, as in QEMU's -serial mon:stdio: Ctrl-A x
quits the launcher (exit 5, the terminal put back), Ctrl-A Ctrl-A sends the guest one Ctrl-A,
and Ctrl-A then any other key sends both. Input from a pipe or a file reaches the guest as it is.

Confinement: once the guest is set up and its devices open, the launcher needs no privilege.
--chroot and --user take away its files and its root; the seccomp filter, on unless
--no-seccomp, limits it to the system calls its run loop and devices make, and a call outside
it ends the launcher with a line naming the call (the launcher dies of SIGSYS). The guest runs
in a process of its own, which the launcher forks and waits for, and which confines itself; when
the guest reboots, the launcher forks a fresh one, which opens everything again and confines
itself again. Under --no-reboot the guest runs in the launcher's own process.

Exit statistics: lg.ko counts every exit of a guest by its reason, the hypercalls, page faults,
traps and interrupts it handles itself included, with the time it spent on them. --stats prints
them when the guest stops (on power off, death or reboot; not on Ctrl-A x); lguest-stat shows
them while it runs, refreshed every second, from another terminal. Both read them from
/proc/PID/fdinfo/FD of the launcher's /dev/lguest.

Examples:
  lguest-launcher 64 bzImage console=hvc0
      64 MiB of RAM and the kernel's console on this terminal
  lguest-launcher --block disk.img --net tap=tap0 --rng 256m bzImage console=hvc0 root=/dev/vda
      a disk, which the kernel mounts as its root, a network card on the tap tap0 (which must
      exist: ip tuntap add tap0 mode tap) with a random MAC, and an entropy source
  lguest-launcher --user nobody --chroot /var/empty --block disk.img 64 bzImage console=hvc0
      a disk, and the launcher running as nobody in an empty root directory once it is open
  lguest-launcher --stats 64 teaching-guest
      the teaching guest's self-tests, then a table of every exit they cost";

/// Run a Linux-style kernel built for lguest as a guest, through /dev/lguest (lg.ko).
#[derive(Parser)]
#[command(name = "lguest-launcher", version, after_help = AFTER_HELP)]
pub struct Args {
    /// Guest RAM in MiB (64), or with a k, m, g or t suffix (65536k, 1g)
    #[arg(value_name = "MEM")]
    mem: String,
    /// The guest kernel: a bzImage or an ELF vmlinux built for lguest
    #[arg(value_name = "KERNEL")]
    kernel: PathBuf,
    /// The kernel command line; its words are joined with spaces
    #[arg(
        value_name = "CMDLINE",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    cmdline: Vec<String>,
    /// Load FILE as the guest's initial RAM disk
    #[arg(long, value_name = "FILE")]
    initrd: Option<PathBuf>,
    /// Give the guest a virtio disk backed by FILE (`,ro`: read-only); may be repeated
    #[arg(long, value_name = "FILE[,ro]")]
    block: Vec<String>,
    /// Give the guest a virtio network card on the existing tap device NAME, with address MAC
    /// (random if not given); may be repeated
    #[arg(long, value_name = "tap=NAME[,mac=MAC]")]
    net: Vec<String>,
    /// Give the guest a virtio entropy source, fed from the host's getrandom
    #[arg(long)]
    rng: bool,
    /// When the guest reboots, exit (code 4) instead of starting it afresh
    #[arg(long)]
    no_reboot: bool,
    /// Say more: -v what was loaded and where, -vv debugging detail (RUST_LOG overrides)
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Print every exit from the guest on stderr, with its reason (an MMIO access: the
    /// instruction and what the device answered)
    #[arg(long)]
    trace: bool,
    /// When the guest stops, print on stderr what lg.ko counted of its exits, the ones it
    /// handles itself included: how many of each kind, the time they took and its mean
    /// (lguest-stat shows the same live)
    #[arg(long)]
    stats: bool,
    /// Once the guest is set up, run as USER (a name, or a numeric UID) in USER's groups, or in
    /// group GID alone if given (a UID the user database lacks needs it); needs root
    #[arg(long, value_name = "USER[:GID]")]
    user: Option<String>,
    /// Once the guest is set up, make DIR the launcher's root directory (before --user)
    #[arg(long, value_name = "DIR")]
    chroot: Option<PathBuf>,
    /// Run without the seccomp filter (for debugging the launcher: see Confinement below)
    #[arg(long)]
    no_seccomp: bool,
    /// Take every guest system call through the host, never the Switcher's fast path (for
    /// comparing the two)
    #[arg(long)]
    no_fast_paths: bool,
}

/// What the command line asks for, checked.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub ram_bytes: u64,
    pub kernel: PathBuf,
    /// The words the user gave the kernel, in order.
    pub kernel_words: Vec<String>,
    pub initrd: Option<PathBuf>,
    pub disks: Vec<Disk>,
    pub nets: Vec<NetCard>,
    pub rng: bool,
    pub no_reboot: bool,
    pub verbose: u8,
    pub trace: bool,
    pub stats: bool,
    /// `--user`'s USER[:GID], looked up later (confine.rs), since that reads the user database.
    pub user: Option<String>,
    pub chroot: Option<PathBuf>,
    /// Whether to install the seccomp filter: not `--no-seccomp`.
    pub seccomp: bool,
    /// Whether the Switcher may take its fast paths: not `--no-fast-paths`.
    pub fast_paths: bool,
}

/// A disk, as `--block` asks for it.
#[derive(Debug, PartialEq, Eq)]
pub struct Disk {
    /// The image file (or block device) behind it.
    pub path: PathBuf,
    pub read_only: bool,
}

impl Disk {
    /// Reads `FILE[,ro]`. A FILE whose name has a comma in it is still a FILE, as long as the
    /// name does not end in `,ro`.
    fn parse(text: &str) -> anyhow::Result<Disk> {
        let (path, read_only) = match text.strip_suffix(",ro") {
            Some(path) => (path, true),
            None => (text, false),
        };
        if path.is_empty() {
            bail!("--block wants FILE or FILE,ro, not '{text}'");
        }
        Ok(Disk {
            path: path.into(),
            read_only,
        })
    }
}

/// A network card, as `--net` asks for it.
#[derive(Debug, PartialEq, Eq)]
pub struct NetCard {
    /// The tap interface the card's frames go to and come from.
    pub tap: String,
    /// Its address, until [`Request::choose_macs`] chooses one.
    pub mac: Option<Mac>,
}

impl NetCard {
    /// Reads `tap=NAME[,mac=MAC]`.
    fn parse(text: &str) -> anyhow::Result<NetCard> {
        let (mut tap, mut mac) = (None, None);
        for setting in text.split(',') {
            match setting.split_once('=') {
                Some(("tap", name)) if tap.is_none() && !name.is_empty() => tap = Some(name),
                Some(("mac", address)) if mac.is_none() => {
                    mac = Some(address.parse().map_err(anyhow::Error::msg)?);
                }
                _ => bail!("'{setting}' is not tap=NAME nor mac=MAC, each once"),
            }
        }
        let tap = tap.context("a tap=NAME is needed")?.to_owned();
        Ok(NetCard { tap, mac })
    }
}

impl Args {
    /// Checks what clap read from `argv` (the whole command line, program name first): the
    /// memory size, the devices' settings, and that no option of the launcher's hides among the
    /// kernel's words.
    pub fn check(self, argv: &[OsString]) -> anyhow::Result<Request> {
        let ram_bytes = parse_mem_size(&self.mem)?;
        let disks = self
            .block
            .iter()
            .map(|disk| Disk::parse(disk))
            .collect::<anyhow::Result<_>>()?;
        let nets = self
            .net
            .iter()
            .map(|net| NetCard::parse(net).with_context(|| format!("--net {net}")))
            .collect::<anyhow::Result<_>>()?;
        if let Some(word) = misplaced_option(argv, &self.cmdline) {
            bail!(
                "'{word}' after KERNEL would be a kernel word: put the launcher's options before \
                 MEM (or a `--` before it, to give it to the kernel)"
            );
        }
        Ok(Request {
            ram_bytes,
            kernel: self.kernel,
            kernel_words: self.cmdline,
            initrd: self.initrd,
            disks,
            nets,
            rng: self.rng,
            no_reboot: self.no_reboot,
            verbose: self.verbose,
            trace: self.trace,
            stats: self.stats,
            user: self.user,
            chroot: self.chroot,
            seccomp: !self.no_seccomp,
            fast_paths: !self.no_fast_paths,
        })
    }
}

impl Request {
    /// Gives every network card without an address a random one.
    pub fn choose_macs(&mut self) -> io::Result<()> {
        for card in self.nets.iter_mut().filter(|card| card.mac.is_none()) {
            card.mac = Some(Mac::random()?);
        }
        Ok(())
    }
}

/// The first of the kernel's `words` that is an option of the launcher's and is not after a
/// `--`.
///
/// clap drops the first `--` it meets before the kernel's words begin (the user's "no more
/// options"), and keeps a later one among them; so when `argv` holds more `--` than `words`,
/// every word came after a dropped one.
fn misplaced_option<'a>(argv: &[OsString], words: &'a [String]) -> Option<&'a str> {
    let dashes = |count: usize, word: bool| count + usize::from(word);
    let in_argv = argv.iter().skip(1).fold(0, |n, arg| dashes(n, arg == "--"));
    let in_words = words.iter().fold(0, |n, word| dashes(n, word == "--"));
    if in_argv > in_words {
        return None;
    }
    let mut command = Args::command();
    // Adds --help and --version, which are options of the launcher's too.
    command.build();
    words
        .iter()
        .take_while(|word| *word != "--")
        .find(|word| is_option(&command, word))
        .map(String::as_str)
}

/// Whether `word` names one of `command`'s options: `--long`, `--long=value`, or `-s` with
/// anything after the letter (`-vv`).
fn is_option(command: &clap::Command, word: &str) -> bool {
    if let Some(long) = word.strip_prefix("--") {
        let name = long.split_once('=').map_or(long, |(name, _)| name);
        command
            .get_arguments()
            .any(|arg| arg.get_long() == Some(name))
    } else if let Some(short) = word.strip_prefix('-').and_then(|rest| rest.chars().next()) {
        command
            .get_arguments()
            .any(|arg| arg.get_short() == Some(short))
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(line: &str) -> Vec<OsString> {
        std::iter::once("lguest-launcher")
            .chain(line.split_whitespace())
            .map(OsString::from)
            .collect()
    }

    fn parse(line: &str) -> Request {
        let argv = argv(line);
        Args::try_parse_from(&argv).unwrap().check(&argv).unwrap()
    }

    fn refusal(line: &str) -> String {
        let argv = argv(line);
        let error = Args::try_parse_from(&argv)
            .unwrap()
            .check(&argv)
            .unwrap_err();
        format!("{error:#}")
    }

    #[test]
    fn options_before_mem_are_the_launchers() {
        let request = parse("--block d.img -vv --rng --no-reboot 64 bzImage root=/dev/vda quiet");
        assert_eq!(request.ram_bytes, 64 << 20);
        assert_eq!(request.kernel, PathBuf::from("bzImage"));
        assert_eq!(
            request.disks,
            [Disk {
                path: "d.img".into(),
                read_only: false
            }]
        );
        assert_eq!(request.verbose, 2);
        assert!(request.rng);
        assert!(request.no_reboot);
        assert_eq!(request.kernel_words, ["root=/dev/vda", "quiet"]);
    }

    #[test]
    fn the_filter_is_on_unless_turned_off_and_user_and_root_are_read() {
        let request = parse("64m bzImage");
        assert!(request.seccomp);
        assert_eq!((request.user, request.chroot), (None, None));
        let request = parse("--no-seccomp --user 65534:65534 --chroot /var/empty 64m bzImage");
        assert!(!request.seccomp);
        assert_eq!(request.user.as_deref(), Some("65534:65534"));
        assert_eq!(request.chroot, Some(PathBuf::from("/var/empty")));
    }

    #[test]
    fn launcher_options_among_the_kernels_words_are_refused() {
        for (line, word) in [
            ("64m bzImage root=/dev/vda --block d.img", "--block"),
            ("64m bzImage root=/dev/vda --block=d.img", "--block=d.img"),
            ("64m bzImage quiet --net tap=tap0", "--net"),
            ("64m bzImage quiet --initrd=i.img", "--initrd=i.img"),
            ("64m bzImage quiet --rng", "--rng"),
            ("64m bzImage quiet --trace", "--trace"),
            ("64m bzImage quiet --no-reboot", "--no-reboot"),
            ("64m bzImage quiet -v", "-v"),
            ("64m bzImage quiet -vv", "-vv"),
            ("64m bzImage quiet --verbose", "--verbose"),
            ("64m bzImage quiet --help", "--help"),
            ("64m bzImage quiet --user nobody", "--user"),
            (
                "64m bzImage quiet --chroot=/var/empty",
                "--chroot=/var/empty",
            ),
            ("64m bzImage quiet --no-seccomp", "--no-seccomp"),
            ("64m bzImage quiet -V", "-V"),
        ] {
            let error = refusal(line);
            assert!(
                error.starts_with(&format!("'{word}' after KERNEL would be a kernel word")),
                "{line}: {error}"
            );
            assert!(
                error.contains("put the launcher's options before MEM"),
                "{error}"
            );
        }
    }

    #[test]
    fn words_that_are_not_launcher_options_reach_the_kernel() {
        let words = ["-", "-x", "--bogus", "--blocks", "--", "init=/bin/sh"];
        let request = parse(&format!("64m bzImage quiet {}", words.join(" ")));
        assert_eq!(request.kernel_words[0], "quiet");
        assert_eq!(request.kernel_words[1..], words);
    }

    #[test]
    fn after_a_double_dash_anything_reaches_the_kernel() {
        // Right after KERNEL, clap takes `--` as the end of the options and drops it.
        let request = parse("64m bzImage -- --block d.img -v");
        assert_eq!(request.kernel_words, ["--block", "d.img", "-v"]);
        assert!(request.disks.is_empty());
        // Later, it is one of the kernel's words, which hands what follows to init.
        let request = parse("64m bzImage quiet -- --rng -v");
        assert_eq!(request.kernel_words, ["quiet", "--", "--rng", "-v"]);
        assert!(!request.rng);
        // Before MEM it ends the options too, and the words after KERNEL are the kernel's.
        let request = parse("--rng -- 64m bzImage --trace");
        assert_eq!(request.kernel_words, ["--trace"]);
        // A `--` after the option does not excuse it.
        let error = refusal("64m bzImage quiet --rng --");
        assert!(error.starts_with("'--rng' after KERNEL"), "{error}");
    }

    #[test]
    fn a_bad_memory_size_is_refused_before_anything_else() {
        let error = refusal("0 bzImage --block d.img");
        assert_eq!(error, "invalid memory size '0': must be more than zero");
    }

    #[test]
    fn disks_are_a_file_maybe_read_only() {
        let request = parse("--block a.img --block=b,c.img,ro --block /dev/vdb,ro,ro 64 bzImage");
        let disk = |path: &str, read_only| Disk {
            path: path.into(),
            read_only,
        };
        assert_eq!(
            request.disks,
            [
                disk("a.img", false),
                disk("b,c.img", true),
                disk("/dev/vdb,ro", true)
            ]
        );
        for bad in [",ro", ""] {
            let refused = refusal(&format!("--block={bad} 64 bzImage"));
            assert_eq!(
                refused,
                format!("--block wants FILE or FILE,ro, not '{bad}'")
            );
        }
    }

    #[test]
    fn net_cards_name_a_tap_and_maybe_a_mac() {
        let request = parse(
            "--net tap=tap0 --net=mac=52:54:00:12:34:56,tap=lg1 --net tap=tap2,mac=02:00:00:00:00:01 \
             64m bzImage",
        );
        let card = |tap: &str, mac: Option<[u8; 6]>| NetCard {
            tap: tap.into(),
            mac: mac.map(Mac),
        };
        assert_eq!(
            request.nets,
            [
                card("tap0", None),
                card("lg1", Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])),
                card("tap2", Some([2, 0, 0, 0, 0, 1])),
            ]
        );
    }

    #[test]
    fn bad_net_cards_are_refused() {
        for (net, error) in [
            (
                "tap0",
                "--net tap0: 'tap0' is not tap=NAME nor mac=MAC, each once",
            ),
            (
                "tap=",
                "--net tap=: 'tap=' is not tap=NAME nor mac=MAC, each once",
            ),
            (
                "tap=a,tap=b",
                "--net tap=a,tap=b: 'tap=b' is not tap=NAME nor mac=MAC, each once",
            ),
            (
                "tap=a,model=e1000",
                "'model=e1000' is not tap=NAME nor mac=MAC, each once",
            ),
            ("tap=a,", "'' is not tap=NAME nor mac=MAC, each once"),
            (
                "mac=52:54:00:12:34:56",
                "--net mac=52:54:00:12:34:56: a tap=NAME is needed",
            ),
            (
                "tap=a,mac=52:54:00:12:34",
                "'52:54:00:12:34' is not a MAC address like",
            ),
            (
                "tap=a,mac=ff:ff:ff:ff:ff:ff",
                "is a multicast address, which no card may have",
            ),
        ] {
            let refused = refusal(&format!("--net {net} 64m bzImage"));
            assert!(refused.contains(error), "{net}: {refused}");
        }
    }

    #[test]
    fn only_cards_without_a_mac_get_a_random_one() {
        let mut request = parse("--net tap=a --net tap=b,mac=02:00:00:00:00:01 64m bzImage");
        request.choose_macs().unwrap();
        let chosen = request.nets[0].mac.unwrap();
        assert_eq!(chosen.0[0] & 0b11, 0b10, "{chosen}");
        assert_eq!(request.nets[1].mac, Some(Mac([2, 0, 0, 0, 0, 1])));
        request.choose_macs().unwrap();
        assert_eq!(request.nets[0].mac, Some(chosen));
    }

    #[test]
    fn the_fast_paths_are_on_unless_turned_off() {
        assert!(parse("64m bzImage").fast_paths);
        assert!(!parse("--no-fast-paths 64m bzImage").fast_paths);
    }

    #[test]
    fn stats_are_asked_for_with_their_option() {
        assert!(!parse("64m bzImage").stats);
        assert!(parse("--stats 64m bzImage").stats);
    }

    #[test]
    fn help_says_where_options_go_and_what_each_exit_code_means() {
        let help = Args::command().render_long_help().to_string();
        for part in [
            "Options go before MEM:",
            "The escape key is Ctrl-A",
            "Examples:",
            "--stats",
            "lguest-stat shows",
        ] {
            assert!(help.contains(part), "{part}: {help}");
        }
        for (code, meaning) in [
            (POWERED_OFF, "the guest powered off"),
            (LAUNCHER_ERROR, "the launcher failed"),
            (USAGE, "the command line is wrong"),
            (GUEST_DIED, "the guest died"),
            (GUEST_REBOOTED, "the guest rebooted, under --no-reboot"),
            (QUIT, "the user quit: Ctrl-A x"),
        ] {
            assert!(
                help.contains(&format!("\n  {code}  {meaning}")),
                "{code}: {help}"
            );
        }
    }
}
