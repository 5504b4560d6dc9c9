//! Located diagnostics: every config problem carries its file, line and
//! column, a message, and a hint saying what to do.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {sev}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )?;
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

/// Collects diagnostics while validating one file; turns byte offsets into
/// 1-based line and column (columns count characters, not bytes).
pub struct Diags<'a> {
    file: &'a Path,
    src: &'a str,
    pub items: Vec<Diagnostic>,
}

impl<'a> Diags<'a> {
    pub fn new(file: &'a Path, src: &'a str) -> Self {
        Diags {
            file,
            src,
            items: Vec::new(),
        }
    }

    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.src.len());
        let before = &self.src[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let col = self.src[line_start..offset].chars().count() + 1;
        (line, col)
    }

    /// The key written just before `offset` (`bootstrap` in `bootstrap = 5`
    /// when `offset` is the value's), to name it in serde's messages, which
    /// do not.
    pub fn key_before(&self, offset: usize) -> Option<String> {
        let offset = offset.min(self.src.len());
        let before = &self.src[..offset];
        let line = &before[before.rfind('\n').map(|i| i + 1).unwrap_or(0)..];
        let lhs = line.trim_end().strip_suffix('=')?.trim_end();
        let start = lhs
            .rfind(|c: char| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '"')))
            .map(|i| i + 1)
            .unwrap_or(0);
        let key = lhs[start..].trim_matches('"');
        (!key.is_empty()).then(|| key.to_string())
    }

    fn push(
        &mut self,
        severity: Severity,
        span: Range<usize>,
        message: String,
        hint: Option<String>,
    ) {
        let (line, col) = self.line_col(span.start);
        self.items.push(Diagnostic {
            severity,
            file: self.file.to_path_buf(),
            line,
            col,
            message,
            hint,
        });
    }

    pub fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.push(Severity::Error, span, message.into(), None);
    }

    pub fn error_hint(
        &mut self,
        span: Range<usize>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.push(Severity::Error, span, message.into(), Some(hint.into()));
    }

    pub fn warn_hint(
        &mut self,
        span: Range<usize>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.push(Severity::Warning, span, message.into(), Some(hint.into()));
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.severity == Severity::Error)
    }
}

/// The closest candidate to `word`, when it is close enough to suggest.
pub fn did_you_mean<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}
