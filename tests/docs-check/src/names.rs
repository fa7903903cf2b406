//! What a word of code in the book is: a path in the tree, a file's name, a scenario, or
//! something holding identifiers, and which of those identifiers are worth checking.
//!
//! The check must have few false positives, or nobody heeds it, so it looks only at words whose
//! shape says what they are: paths with a slash, file names with a known extension, kebab-case
//! words with a scenario's prefix, and identifiers that cannot be English words (snake_case with
//! an underscore, CamelCase with two humps, SCREAMING_CASE with an underscore). `map`, `Session`
//! or `HALT` go unchecked: they could be anything.

/// Extensions of the files the book names by their name alone (`file_ops.rs`, `run-vm.sh`).
const EXTENSIONS: &[&str] = &[
    "rs", "sh", "S", "c", "h", "md", "toml", "config", "ld", "lock",
];

/// The prefixes of the scenario names (tests/e2e/src/scenarios/mod.rs, and the teaching guest's
/// native runs in lguest-dev).
const SCENARIO_PREFIXES: &[&str] = &[
    "guest-",
    "abi-",
    "launcher-",
    "devices-",
    "hostile-",
    "module-",
    "teaching-guest-",
    "linux-",
];

/// What one whitespace-separated word of code is.
#[derive(Debug, PartialEq, Eq)]
pub enum Word<'a> {
    /// A path relative to the repository or to a directory in it: `lg-module/src/session.rs`.
    Path(&'a str),
    /// A file's name: `file_ops.rs`.
    FileName(&'a str),
    /// A scenario's name: `guest-hostile-cli`.
    Scenario(&'a str),
    /// Anything else: its identifiers (`GuestFile::lock_session`, `raise(TIMER_IRQ)`).
    Other(&'a str),
    /// A word with a slash that is no path of ours: absolute (`/dev/lguest`, a path in the VM),
    /// in the home directory (`~/.cache/...`), or with a variable or placeholder in it.
    Elsewhere,
}

/// Classifies a word, once the punctuation around it is gone.
pub fn classify(word: &str) -> Word<'_> {
    let word = word
        .trim_start_matches(['(', '[', '"', '\''])
        .trim_end_matches([')', ']', '"', '\'', ',', '.', ';', ':']);
    let path_chars = |w: &str| {
        !w.is_empty()
            && w.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-/".contains(c))
    };
    if word.contains('/') {
        if word.starts_with(['/', '~']) || !path_chars(word) {
            return Word::Elsewhere;
        }
        return Word::Path(word);
    }
    if let Some((_, extension)) = word.rsplit_once('.') {
        if EXTENSIONS.contains(&extension) && path_chars(word) {
            return Word::FileName(word);
        }
    }
    let scenario_like = SCENARIO_PREFIXES.iter().any(|p| word.starts_with(p))
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '#')
        && !word.ends_with('-');
    if scenario_like {
        return Word::Scenario(word);
    }
    Word::Other(word)
}

/// The identifiers in a word (runs of letters, digits and underscores not starting with a digit)
/// that are shaped like one of ours rather than like an English word.
pub fn identifiers(word: &str) -> impl Iterator<Item = &str> {
    word.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|token| token.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'))
        .filter(|token| is_snake(token) || is_screaming(token) || is_camel(token))
}

/// `run_once`, `x86_64`, `__x`: lower case, with an underscore between two parts.
fn is_snake(token: &str) -> bool {
    is_underscored(token, |c| c.is_ascii_lowercase())
}

/// `IRQ_ENABLED`, `__KERNEL_CS`: upper case, with an underscore between two parts.
fn is_screaming(token: &str) -> bool {
    is_underscored(token, |c| c.is_ascii_uppercase())
}

/// Letters all in one case (`in_case`), digits and underscores, starting with a letter after any
/// leading underscores, with an underscore between two parts.
fn is_underscored(token: &str, in_case: fn(char) -> bool) -> bool {
    let inner = token.trim_start_matches('_');
    inner.contains('_')
        && !inner.ends_with('_')
        && inner.starts_with(in_case)
        && inner
            .chars()
            .all(|c| in_case(c) || c.is_ascii_digit() || c == '_')
}

/// `ShadowTables`, `MmioAccess`: a capital, lower case, and at least one more capital.
fn is_camel(token: &str) -> bool {
    let mut chars = token.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase())
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && token.chars().skip(2).any(|c| c.is_ascii_uppercase())
        && token.chars().all(|c| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words() {
        assert_eq!(
            classify("lg-module/src/session.rs,"),
            Word::Path("lg-module/src/session.rs")
        );
        assert_eq!(classify("src/"), Word::Path("src/"));
        assert_eq!(classify("/dev/lguest"), Word::Elsewhere);
        assert_eq!(classify("~/.cache/lguest-rs"), Word::Elsewhere);
        assert_eq!(classify("M=.../lg-module"), Word::Elsewhere);
        assert_eq!(classify("$CACHE/runs/e2e-*.log"), Word::Elsewhere);
        assert_eq!(classify("(file_ops.rs)"), Word::FileName("file_ops.rs"));
        assert_eq!(classify("lguest_data.cr2"), Word::Other("lguest_data.cr2"));
        assert_eq!(classify("guest-#UD"), Word::Scenario("guest-#UD"));
        assert_eq!(classify("linux-boots"), Word::Scenario("linux-boots"));
        assert_eq!(
            classify("linux-source-6.12"),
            Word::Other("linux-source-6.12")
        );
        assert_eq!(
            classify("guest-hostile-cli,"),
            Word::Scenario("guest-hostile-cli")
        );
        assert_eq!(classify("devices-*"), Word::Other("devices-*"));
        assert_eq!(classify("teaching-guest"), Word::Other("teaching-guest"));
    }

    #[test]
    fn shapes() {
        let found: Vec<&str> =
            identifiers("GuestFile::lock_session(TIMER_IRQ, 0x1f, x86_64)").collect();
        assert_eq!(found, ["GuestFile", "lock_session", "TIMER_IRQ", "x86_64"]);
        let found: Vec<&str> = identifiers("Session HALT map __KERNEL_DS HdrS int3 _").collect();
        assert_eq!(found, ["__KERNEL_DS", "HdrS"]);
    }
}
