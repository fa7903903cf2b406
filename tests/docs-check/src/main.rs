//! lguest-docs-check: the book must not drift from the code it tells.
//!
//! Every chapter points at the code by file and function (README.md, "The book"), so a renamed
//! function or a moved file leaves a reader hunting for what is no longer there. This program
//! reads docs/*.md and README.md and checks, for what they name in backticks or links:
//! - paths exist in the tree: from the top (`lg-module/src/session.rs`), from a directory in it
//!   (`src/interrupts.rs`), or, for a link, from the document; or they are Linux files the guest
//!   patch series creates or changes (`arch/x86/lguest/boot.c`), named but never linked;
//! - a file named alone (`file_ops.rs`) exists somewhere in the tree;
//! - identifiers shaped like ours (`run_once`, `IRQ_ENABLED`, `ShadowTables`) occur in a source
//!   file, as a grep would find them, unless they are Linux's or the CPU's (`NOT_OURS` below);
//! - scenario names (`guest-hostile-cli`) are in the scenario table;
//! - no chapter speaks of issues ("issue #4": the reader has no tracker), or of work not yet
//!   done ("not yet", "for now", "first version", TODO) outside a section that lists it ("What
//!   this does not do yet", the README's Status) and without pointing at one.
//!
//! Usage: `lguest-docs-check [REPOSITORY]` (by default the one it was built from). It prints
//! one line per finding, `FILE:LINE: what`, and exits 1 if there was any, 2 if it could not
//! read the tree. `./lguest-dev check` runs it.

mod markdown;
mod names;

use std::cell::RefCell;
use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use markdown::Block;
use names::Word;

// The allow-lists. Each entry must still be needed: one that saves no finding any more is a
// finding itself, so the lists cannot quietly outgrow the book.

/// Identifiers the book uses that are not ours, so no source file need contain them.
const NOT_OURS: &[&str] = &[
    // Linux: where the host kernel does what the book compares lg.ko with (x86's entry code,
    // its TSS loading) or what a Linux guest would need (page-table helpers without a hook).
    "GET_PERCPU_BASE",
    "native_load_tr_desc",
    "ptep_get_and_clear",
    "ptep_set_wrprotect",
    "ptep_test_and_clear_young",
    // Linux: the boot, entry and paging code the Linux guest meets outside guest-patches/.
    "ALT_NOT_XEN",
    "arch_cpu_finalize_init",
    "common_interrupt",
    "do_syscall_64",
    "idtentry_body",
    "late_time_init",
    "load_cr3",
    "phys_pmd_init",
    "swapper_pg_dir",
    "trap_init",
    "update_task_stack",
    "xen_error_entry",
    // Linux: a line of the fdinfo every open file has, before lg.ko's exit statistics.
    "mnt_id",
    // lguest, the original: its launcher's request for an interrupt.
    "LHREQ_IRQ",
    // The virtio 1.x specification's names for virtio-mmio registers (section 4.2.2).
    "InterruptACK",
    "InterruptStatus",
    // The CPU: the vendor string CPUID leaf 0 returns, in the teaching guest's sample output.
    "AuthenticAMD",
];

/// Paths the book names that are not in this tree.
const PATHS_NOT_OURS: &[&str] = &[
    // In the Linux source tree: where a kernel build leaves the bzImage.
    "arch/x86/boot/bzImage",
];

/// Words with a scenario's prefix that are English, not scenarios (in quoted death messages).
const NOT_SCENARIOS: &[&str] = &["guest-physical"];

/// Sentences the prose rules would flag that speak of no unfinished work, by document.
const PROSE_ALLOWED: &[(&str, &str)] = &[
    // A guest page no host page backs yet, not work to do.
    ("docs/shadow-paging.md", "or by none yet"),
];

/// Headings (in lower case) of the sections that list what is not done yet: the chapters' own,
/// and the README's Status, which names what comes next. Work is tracked there.
const TRACKING_HEADINGS: &[&str] = &["what this does not do yet", "status"];

/// Where the scenarios are listed, and the script that runs the host-side ones.
const SCENARIO_TABLE: &str = "tests/e2e/src/scenarios/mod.rs";
const HOST_SCENARIOS: &str = "lguest-dev";
/// The teaching guest's sources, and guest-core's (its command line is read there), whose
/// self-tests and command words (`guest-#UD`, `devices-verify`) are named like scenarios:
/// strings there count as scenario names.
const GUEST_SOURCES: &[&str] = &["guest/src/", "guest-core/src/"];

/// This program's own directory, whose lists must not count as sources.
const SELF: &str = "tests/docs-check";

/// The Linux guest's patch series: the Linux files its patches create or change are paths the
/// book may name (their identifiers count already, since the patches are sources).
const PATCHES: &str = "guest-patches/";

fn main() -> ExitCode {
    let root = match std::env::args_os().nth(1) {
        Some(root) => PathBuf::from(root),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."),
    };
    match run(&root) {
        Ok(findings) => {
            for finding in &findings {
                println!("{finding}");
            }
            if findings.is_empty() {
                ExitCode::SUCCESS
            } else {
                println!("lguest-docs-check: {} to fix", findings.len());
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("lguest-docs-check: {}: {e}", root.display());
            ExitCode::from(2)
        }
    }
}

/// Checks every document under `root`; returns the findings.
fn run(root: &Path) -> std::io::Result<Vec<String>> {
    let mut tree = Tree::walk(root)?;
    tree.add_patched(root)?;
    let mut docs: Vec<&String> = tree.files.iter().filter(|f| is_doc(f.as_str())).collect();
    docs.sort();
    let mut words = HashSet::new();
    for file in &tree.files {
        if !is_doc(file) && !file.starts_with(&format!("{SELF}/")) {
            let text = fs::read(root.join(file))?;
            for token in String::from_utf8_lossy(&text).split(|c: char| !is_ident_char(c)) {
                words.insert(token.to_string());
            }
        }
    }
    let scenarios = scenarios(root, &tree)?;
    let used = RefCell::new(HashSet::new());
    let mut findings = Vec::new();
    for doc in docs {
        let text = fs::read_to_string(root.join(doc))?;
        let checker = Checker {
            tree: &tree,
            words: &words,
            scenarios: &scenarios,
            used: &used,
            doc,
        };
        findings.extend(checker.check(&markdown::parse(&text)));
    }
    let used = used.into_inner();
    let allowed = NOT_OURS.iter().chain(PATHS_NOT_OURS).chain(NOT_SCENARIOS);
    for entry in allowed.chain(PROSE_ALLOWED.iter().map(|(_, phrase)| phrase)) {
        if !used.contains(entry) {
            findings.push(format!(
                "{SELF}/src/main.rs: `{entry}` is allowed but needed by no document"
            ));
        }
    }
    Ok(findings)
}

/// The book: README.md and the chapters.
fn is_doc(file: &str) -> bool {
    file == "README.md" || (file.starts_with("docs/") && file.ends_with(".md"))
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The names the book may use with a scenario's prefix: the table's, the host-side scenarios
/// lguest-dev runs itself, and the teaching guest's self-tests and command words.
fn scenarios(root: &Path, tree: &Tree) -> std::io::Result<HashSet<String>> {
    let mut names = HashSet::new();
    let table = fs::read_to_string(root.join(SCENARIO_TABLE))?;
    for entry in table.split("name: \"").skip(1) {
        if let Some((name, _)) = entry.split_once('"') {
            names.insert(name.to_string());
        }
    }
    // `guest_hostile!("cli")` is the scenario `guest-hostile-cli`.
    for entry in table.split("guest_hostile!(\"").skip(1) {
        if let Some((attack, _)) = entry.split_once('"') {
            names.insert(format!("guest-hostile-{attack}"));
        }
    }
    let mut add = |text: &str| {
        for word in text.split(|c: char| c.is_whitespace() || c == '"') {
            if let Word::Scenario(name) = names::classify(word) {
                names.insert(name.to_string());
            }
        }
    };
    add(&fs::read_to_string(root.join(HOST_SCENARIOS))?);
    let in_guest = |f: &&String| GUEST_SOURCES.iter().any(|dir| f.starts_with(dir));
    for file in tree.files.iter().filter(in_guest) {
        // Only the strings: every other piece of the file is code or comment.
        let text = fs::read_to_string(root.join(file))?;
        for (i, piece) in text.split('"').enumerate() {
            if i % 2 == 1 {
                add(piece);
            }
        }
    }
    Ok(names)
}

/// Every file and directory in the repository, by its path from the top, without the build
/// outputs a checkout may hold (`target/`) and git's own.
struct Tree {
    files: HashSet<String>,
    dirs: HashSet<String>,
    /// The files the guest patches create or change, and their directories: paths in the Linux
    /// tree the series applies to, not in this one, so a word may name them and a link may not.
    patched: HashSet<String>,
}

impl Tree {
    fn walk(root: &Path) -> std::io::Result<Tree> {
        let mut tree = Tree {
            files: HashSet::new(),
            dirs: HashSet::new(),
            patched: HashSet::new(),
        };
        let mut pending = vec![String::new()];
        while let Some(dir) = pending.pop() {
            for entry in fs::read_dir(root.join(&dir))? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name == ".git" || name == "target" {
                    continue;
                }
                let path = if dir.is_empty() {
                    name
                } else {
                    format!("{dir}/{name}")
                };
                if entry.file_type()?.is_dir() {
                    tree.dirs.insert(path.clone());
                    pending.push(path);
                } else {
                    tree.files.insert(path);
                }
            }
        }
        Ok(tree)
    }

    /// Adds what the patches in `PATCHES` create or change, with their directories.
    fn add_patched(&mut self, root: &Path) -> std::io::Result<()> {
        for patch in self.files.iter().filter(|f| is_patch(f)) {
            let text = fs::read_to_string(root.join(patch))?;
            for file in patched_files(&text) {
                let mut path = file;
                self.patched.insert(path.to_string());
                while let Some((dir, _)) = path.rsplit_once('/') {
                    self.patched.insert(dir.to_string());
                    path = dir;
                }
            }
        }
        Ok(())
    }

    /// `path` in this tree, as a link may point at it.
    fn has(&self, path: &str) -> bool {
        self.files.contains(path) || self.dirs.contains(path)
    }

    /// `path` from the top, or from some directory in the tree (`src/traps.rs`), or in the
    /// Linux tree the patches change (`arch/x86/lguest/head.S`, `lguest/irq.c`).
    fn has_under_some_dir(&self, path: &str) -> bool {
        let suffix = format!("/{path}");
        self.has(path)
            || self.patched.contains(path)
            || self
                .files
                .iter()
                .chain(&self.dirs)
                .chain(&self.patched)
                .any(|p| p.ends_with(&suffix))
    }
}

/// A patch of the Linux guest's series.
fn is_patch(file: &str) -> bool {
    file.starts_with(PATCHES) && file.ends_with(".patch")
}

/// The files a patch leaves behind: the `+++ b/PATH` line of each file it creates or changes
/// (one it deletes has `+++ /dev/null`).
fn patched_files(patch: &str) -> impl Iterator<Item = &str> {
    patch.lines().filter_map(|line| line.strip_prefix("+++ b/"))
}

/// One document's checks.
struct Checker<'a> {
    tree: &'a Tree,
    words: &'a HashSet<String>,
    scenarios: &'a HashSet<String>,
    /// The allow-list entries that saved a finding, in any document.
    used: &'a RefCell<HashSet<&'static str>>,
    doc: &'a str,
}

impl Checker<'_> {
    /// The document's findings, in the order of its lines.
    fn check(&self, doc: &markdown::Document) -> Vec<String> {
        let mut findings = Vec::new();
        let mut say = |line: usize, what: String| findings.push((line, what));
        for code in &doc.code {
            for word in code.text.split_whitespace() {
                if let Some(what) = self.check_word(word) {
                    say(code.line, what);
                }
            }
        }
        for link in &doc.links {
            if let Some(what) = self.check_link(&link.text) {
                say(link.line, what);
            }
        }
        for block in &doc.blocks {
            for what in self.check_prose(block) {
                say(block.line, what);
            }
        }
        findings.sort_by_key(|(line, _)| *line);
        findings
            .into_iter()
            .map(|(line, what)| format!("{}:{line}: {what}", self.doc))
            .collect()
    }

    /// Whether `name` is on `list`, noting that the entry was needed.
    fn allowed(&self, list: &'static [&'static str], name: &str) -> bool {
        match list.iter().find(|entry| **entry == name) {
            Some(entry) => {
                self.used.borrow_mut().insert(entry);
                true
            }
            None => false,
        }
    }

    /// An identifier a grep of the sources finds: as written, or for a kernel option
    /// (`CONFIG_X86_UMIP`) without its prefix, as tests/harness/host-kernel.config names it.
    fn in_sources(&self, id: &str) -> bool {
        self.words.contains(id)
            || id
                .strip_prefix("CONFIG_")
                .is_some_and(|option| self.words.contains(option))
    }

    fn check_word(&self, word: &str) -> Option<String> {
        match names::classify(word) {
            Word::Path(path) => {
                let path = path.trim_start_matches("./").trim_end_matches('/');
                let known = self.tree.has_under_some_dir(path)
                    || is_build_output(path)
                    || self.allowed(PATHS_NOT_OURS, path);
                (!known).then(|| format!("no such path: `{path}`"))
            }
            Word::FileName(name) => {
                let known = self.tree.has_under_some_dir(name) || is_build_output(name);
                (!known).then(|| format!("no file named `{name}`"))
            }
            Word::Scenario(name) => {
                let known = self.scenarios.contains(name) || self.allowed(NOT_SCENARIOS, name);
                (!known).then(|| format!("no scenario `{name}` in {SCENARIO_TABLE}"))
            }
            Word::Other(other) => {
                let missing: Vec<&str> = names::identifiers(other)
                    .filter(|id| !self.in_sources(id) && !self.allowed(NOT_OURS, id))
                    .collect();
                (!missing.is_empty())
                    .then(|| format!("not in any source: `{}`", missing.join("`, `")))
            }
            Word::Elsewhere => None,
        }
    }

    fn check_link(&self, target: &str) -> Option<String> {
        let path = target.split('#').next().unwrap_or_default();
        if path.is_empty() || target.contains("://") || target.starts_with("mailto:") {
            return None;
        }
        let base = Path::new(self.doc).parent().unwrap_or(Path::new(""));
        match normalize(&base.join(path)) {
            Some(resolved) if resolved.is_empty() || self.tree.has(&resolved) => None,
            _ => Some(format!("link to a path that does not exist: {target}")),
        }
    }

    fn check_prose(&self, block: &Block) -> Vec<String> {
        let mut findings = Vec::new();
        if let Some(issue) = issue_mention(&block.text) {
            findings.push(format!(
                "speaks of an issue (\"{issue}\"): the reader has no tracker; say what it means"
            ));
        }
        if let Some(unfinished) = unfinished(&block.text) {
            let heading = block.heading.to_lowercase();
            let tracked = TRACKING_HEADINGS.contains(&heading.as_str())
                || block.text.contains("does not do yet")
                || block.text.contains("README.md#status");
            let allowed = PROSE_ALLOWED
                .iter()
                .find(|(doc, phrase)| *doc == self.doc && block.text.contains(phrase));
            if let Some((_, phrase)) = allowed {
                self.used.borrow_mut().insert(phrase);
            } else if !tracked {
                findings.push(format!(
                    "\"{unfinished}\" without saying where the work is tracked (a \"What this \
                     does not do yet\" section, or README.md's Status)"
                ));
            }
        }
        findings
    }
}

/// Where cargo and Kbuild put what they build: never in the tree, named all the same.
fn is_build_output(path: &str) -> bool {
    path.starts_with("target/") || path.ends_with(".ko") || path.ends_with(".o")
}

/// `a/b/../c` as `a/c`; `None` if it climbs out of the top.
fn normalize(path: &Path) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                parts.pop()?;
            }
            std::path::Component::Normal(name) => parts.push(name.to_string_lossy().into_owned()),
            _ => {}
        }
    }
    Some(parts.join("/"))
}

/// "issue #4", "issue 13", "the issue notes": a mention of the project's issue tracker.
fn issue_mention(text: &str) -> Option<&str> {
    let lower = text.to_ascii_lowercase();
    let mut from = 0;
    while let Some(at) = lower[from..].find("issue").map(|i| i + from) {
        from = at + "issue".len();
        if lower[..at].ends_with(is_ident_char) {
            continue;
        }
        let plural = usize::from(lower[from..].starts_with('s'));
        let gap = lower[from + plural..].len() - lower[from + plural..].trim_start().len();
        let rest = &lower[from + plural + gap..];
        let pointer = if rest.starts_with("note") {
            rest.find(|c: char| !c.is_ascii_alphabetic())
                .unwrap_or(rest.len())
        } else {
            let number = rest.strip_prefix('#').unwrap_or(rest);
            let digits = number.len()
                - number
                    .trim_start_matches(|c: char| c.is_ascii_digit())
                    .len();
            if digits == 0 {
                continue;
            }
            rest.len() - number.len() + digits
        };
        return Some(&text[at..from + plural + gap + pointer]);
    }
    None
}

/// A phrase of work not done yet: "not yet", "none yet", "yet to", "for now", "first version"
/// (the words a chapter wrote when its feature landed half-done, and that go stale unseen),
/// TODO, FIXME.
fn unfinished(text: &str) -> Option<&'static str> {
    // The words one space apart, so that a phrase matches across punctuation and line breaks.
    let words: Vec<&str> = text
        .split(|c: char| !is_ident_char(c))
        .filter(|word| !word.is_empty())
        .collect();
    let spaced = format!(" {} ", words.join(" ").to_ascii_lowercase());
    ["not yet", "none yet", "yet to", "for now", "first version"]
        .into_iter()
        .find(|phrase| spaced.contains(&format!(" {phrase} ")))
        .or_else(|| {
            ["TODO", "FIXME"]
                .into_iter()
                .find(|mark| words.contains(mark))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues() {
        assert_eq!(issue_mention("come with issue #5; they"), Some("issue #5"));
        assert_eq!(
            issue_mention("See the issue notes for"),
            Some("issue notes")
        );
        assert_eq!(issue_mention("Issues 12 and 13"), Some("Issues 12"));
        assert_eq!(issue_mention("the tissue of it; an issue with"), None);
    }

    #[test]
    fn unfinished_work() {
        assert_eq!(unfinished("none yet"), Some("none yet"));
        assert_eq!(unfinished("is not yet there"), Some("not yet"));
        assert_eq!(unfinished("(TODO) later"), Some("TODO"));
        assert_eq!(
            unfinished("in this first version: anything"),
            Some("first version")
        );
        assert_eq!(unfinished("kept, for now."), Some("for now"));
        assert_eq!(unfinished("not mapped yet; no call answers yet"), None);
    }

    #[test]
    fn patched_linux_files() {
        let patch = "--- a/arch/x86/Kconfig\n+++ b/arch/x86/Kconfig\n@@ -1 +1,2 @@\n+x\n\
                     --- /dev/null\n+++ b/arch/x86/lguest/boot.c\n@@ -0,0 +1 @@\n+// boot\n\
                     --- a/arch/x86/gone.c\n+++ /dev/null\n";
        let files: Vec<&str> = patched_files(patch).collect();
        assert_eq!(files, ["arch/x86/Kconfig", "arch/x86/lguest/boot.c"]);
        assert!(is_patch("guest-patches/0003-x86-lguest-boot.patch"));
        assert!(!is_patch("guest-patches/guest.config"));

        let tree = Tree {
            files: HashSet::from(["README.md".to_string()]),
            dirs: HashSet::new(),
            patched: [
                "arch",
                "arch/x86",
                "arch/x86/lguest",
                "arch/x86/lguest/boot.c",
            ]
            .map(String::from)
            .into(),
        };
        assert!(tree.has_under_some_dir("arch/x86/lguest/boot.c"));
        assert!(tree.has_under_some_dir("lguest/boot.c"));
        assert!(tree.has_under_some_dir("arch/x86/lguest"));
        assert!(!tree.has_under_some_dir("arch/x86/lguest/head.S"));
        assert!(
            !tree.has("arch/x86/lguest/boot.c"),
            "no link can point into Linux"
        );
    }

    #[test]
    fn paths() {
        assert_eq!(
            normalize(Path::new("docs/../lguest-dev")).as_deref(),
            Some("lguest-dev")
        );
        assert_eq!(normalize(Path::new("docs/../../x")), None);
        assert!(is_build_output("lg-module/lg.ko"));
        assert!(is_build_output("target/release/lguest-launcher"));
    }
}
