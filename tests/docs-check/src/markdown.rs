//! Just enough Markdown to find what a chapter claims: its code (inline spans and fenced
//! blocks), its link targets, and its prose, cut into blocks under their headings.
//!
//! The book uses a small part of Markdown: paragraphs, `-` and numbered lists, tables, fenced
//! blocks, inline code (single backticks, sometimes across a line break) and inline links. This
//! reader knows those and nothing else; anything it does not know is prose.

/// A piece of text and the line it starts on (1-based).
#[derive(Debug, PartialEq, Eq)]
pub struct Located {
    pub line: usize,
    pub text: String,
}

/// Prose between blank lines, list items and table rows, outside code.
#[derive(Debug, PartialEq, Eq)]
pub struct Block {
    pub line: usize,
    /// The heading the block sits under (empty before the first).
    pub heading: String,
    /// The block's text with its code spans taken out.
    pub text: String,
}

/// What a document says.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Document {
    /// Every inline code span, and every line of a fenced block.
    pub code: Vec<Located>,
    /// Every inline link's target, as written.
    pub links: Vec<Located>,
    pub blocks: Vec<Block>,
}

/// Reads a document.
pub fn parse(text: &str) -> Document {
    let mut doc = Document::default();
    let mut fenced = false;
    let mut heading = String::new();
    let mut block: Option<Block> = None;
    // An inline code span still open at the end of a line goes on into the next one.
    let mut span: Option<Located> = None;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            doc.blocks.extend(block.take());
            continue;
        }
        if fenced {
            doc.code.push(Located {
                line: number,
                text: line.to_string(),
            });
            continue;
        }
        let trimmed = line.trim_start();
        // A blank line ends a block, and a code span: spans never cross paragraphs.
        if trimmed.is_empty() {
            doc.blocks.extend(block.take());
            span = None;
            continue;
        }
        let is_heading = trimmed.starts_with('#');
        if is_heading || starts_item(trimmed) {
            doc.blocks.extend(block.take());
        }
        let prose = take_code(line, number, &mut span, &mut doc.code);
        doc.links.extend(
            links(&prose)
                .into_iter()
                .map(|text| Located { line: number, text }),
        );
        if is_heading {
            heading = prose.trim_start_matches('#').trim().to_string();
            continue;
        }
        let block = block.get_or_insert_with(|| Block {
            line: number,
            heading: heading.clone(),
            text: String::new(),
        });
        block.text.push_str(&prose);
        block.text.push(' ');
    }
    doc.blocks.extend(block);
    doc
}

/// Whether a line starts a list item or is a table row, which end the block before them.
fn starts_item(trimmed: &str) -> bool {
    let numbered = trimmed
        .split_once(". ")
        .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    trimmed.starts_with("- ") || trimmed.starts_with("* ") || trimmed.starts_with('|') || numbered
}

/// Moves the line's inline code into `code` (through `span`, which may be open on entry and on
/// return) and returns the rest: the prose.
fn take_code(
    line: &str,
    number: usize,
    span: &mut Option<Located>,
    code: &mut Vec<Located>,
) -> String {
    let mut prose = String::new();
    for c in line.chars() {
        match (c, span.as_mut()) {
            ('`', Some(_)) => code.extend(span.take()),
            ('`', None) => {
                *span = Some(Located {
                    line: number,
                    text: String::new(),
                })
            }
            (c, Some(open)) => open.text.push(c),
            (c, None) => prose.push(c),
        }
    }
    if let Some(open) = span {
        open.text.push(' ');
    }
    prose
}

/// The targets of the inline links `[text](target)` in a line of prose.
fn links(prose: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut rest = prose;
    while let Some(start) = rest.find("](") {
        rest = &rest[start + 2..];
        let Some(end) = rest.find(')') else { break };
        targets.push(rest[..end].trim().to_string());
        rest = &rest[end + 1..];
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn located(line: usize, text: &str) -> Located {
        Located {
            line,
            text: text.to_string(),
        }
    }

    #[test]
    fn spans_links_and_blocks() {
        let doc = parse(
            "# Title `one`\n\nSee [`abi/`](../abi/src/lib.rs) and `two\nthree`, then\nmore.\n\
             - item [x](y.md#part)\n\n```sh\n./lguest-dev test\n```\n",
        );
        assert_eq!(
            doc.code,
            [
                located(1, "one"),
                located(3, "abi/"),
                located(3, "two three"),
                located(9, "./lguest-dev test"),
            ]
        );
        assert_eq!(
            doc.links,
            [located(3, "../abi/src/lib.rs"), located(6, "y.md#part")]
        );
        assert_eq!(
            doc.blocks,
            [
                Block {
                    line: 3,
                    heading: "Title".into(),
                    text: "See [](../abi/src/lib.rs) and  , then more. ".into(),
                },
                Block {
                    line: 6,
                    heading: "Title".into(),
                    text: "- item [x](y.md#part) ".into(),
                },
            ]
        );
    }

    #[test]
    fn a_blank_line_closes_a_span() {
        let doc = parse("an `open span\n\nnext `closed`\n");
        assert_eq!(doc.code, [located(3, "closed")]);
    }

    #[test]
    fn items_and_rows_are_blocks_of_their_own() {
        let doc = parse("para\n1. first\n2. second\n| a | b |\n| c | d |\n");
        let lines: Vec<usize> = doc.blocks.iter().map(|b| b.line).collect();
        assert_eq!(lines, [1, 2, 3, 4, 5]);
    }
}
