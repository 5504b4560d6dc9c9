//! Logging: `tracing` to stderr, text by default or JSON (`--log-format
//! json`) for shipping. Colours only on a terminal. Under systemd (stderr
//! connected to the journal, `$JOURNAL_STREAM` set) each text line starts
//! with its syslog priority (`<3>` error … `<7>` debug), which journald
//! reads as the entry's priority, and carries no timestamp of its own (the
//! journal has one). Never log a secret: key material lives in `Secret`,
//! whose `Debug`/`Display` print `[redacted]`.
//!
//! Every text line is one line: field values and messages go through
//! [`escape`] ([`EscapedFields`]), so a key name, request id, URL path or
//! response excerpt holding a newline, a carriage return or a terminal
//! escape cannot start a forged line (`\n<2>…` would otherwise be a
//! journal entry of priority "critical") or repaint the operator's
//! terminal. JSON output is escaped by the JSON encoder.

use std::borrow::Cow;
use std::fmt;
use std::io::IsTerminal;

use clap::ValueEnum;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{Format, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `s` with every character that could end a line, start a terminal
/// escape or hide text replaced by a visible escape: `\n`, `\r`, `\t`, and
/// `\u{…}` for the other C0/C1 controls, DEL, the Unicode line/paragraph
/// separators and the bidi overrides. Printable text is kept.
/// Borrowed when nothing needed escaping.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// Field formatting for text logs: `message` first, then `name=value`,
/// every value passed through [`escape`] (no ANSI styling, so escapes in
/// values cannot mix with ours).
#[derive(Debug, Default, Clone, Copy)]
pub struct EscapedFields;

impl<'w> tracing_subscriber::fmt::FormatFields<'w> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut v = EscapeVisitor {
            out: String::new(),
            message: None,
        };
        fields.record(&mut v);
        let mut line = v.message.unwrap_or_default();
        if !v.out.is_empty() {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(&v.out);
        }
        writer.write_str(&line)
    }

    fn add_fields(
        &self,
        current: &'w mut tracing_subscriber::fmt::FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut v = EscapeVisitor {
            out: String::new(),
            message: None,
        };
        fields.record(&mut v);
        if !current.fields.is_empty() && !v.out.is_empty() {
            current.fields.push(' ');
        }
        current.fields.push_str(&v.out);
        Ok(())
    }
}

struct EscapeVisitor {
    out: String,
    message: Option<String>,
}

impl EscapeVisitor {
    fn push(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(escape(value).into_owned());
            return;
        }
        if !self.out.is_empty() {
            self.out.push(' ');
        }
        self.out.push_str(field.name());
        self.out.push('=');
        self.out.push_str(&escape(value));
    }
}

impl Visit for EscapeVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.push(field, value);
        } else {
            // Quoted, as tracing's own formatter shows `?`-recorded strings.
            self.push(field, &format!("{value:?}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.push(field, &format!("{value:?}"));
    }
}

/// The syslog priority journald should record for a level.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Text lines prefixed with `<N>` for journald's `SyslogLevelPrefix=`.
struct JournalPrefix(Format<tracing_subscriber::fmt::format::Full, ()>);

impl<S, N> FormatEvent<S, N> for JournalPrefix
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// Whether stderr is the systemd journal.
fn stderr_is_journal() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some() && !std::io::stderr().is_terminal()
}

/// Install the global subscriber. `level` (or `RUST_LOG`) is an EnvFilter
/// directive; the default is `info`.
pub fn init(format: LogFormat, level: Option<&str>) {
    let filter = match level {
        Some(l) => EnvFilter::new(l),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text if stderr_is_journal() => builder
            .with_ansi(false)
            .fmt_fields(EscapedFields)
            .event_format(JournalPrefix(
                Format::default()
                    .without_time()
                    .with_target(false)
                    .with_level(false),
            ))
            .try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .fmt_fields(EscapedFields)
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
    }

    #[test]
    fn escape_leaves_no_line_break_or_terminal_escape() {
        assert!(matches!(escape("app-key_1.x"), Cow::Borrowed(_)));
        let hostile = "x\n<2>forged\r\x1b[2J\u{2028}\u{202e}\u{85}\x7f";
        let e = escape(hostile);
        assert_eq!(
            e,
            "x\\n<2>forged\\r\\u{1b}[2J\\u{2028}\\u{202e}\\u{85}\\u{7f}"
        );
        assert!(!e.chars().any(needs_escape));
    }

    #[test]
    fn text_log_lines_stay_one_line_whatever_the_fields_hold() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || w.clone())
            .fmt_fields(EscapedFields)
            .event_format(JournalPrefix(
                Format::default()
                    .without_time()
                    .with_target(false)
                    .with_level(false),
            ))
            .finish();
        let hostile = "x\n<2>forged\r\x1b]0;title\x07";
        // And a few hundred random names: bytes, separators, dots, braces,
        // control characters, very long.
        use rand::{Rng, SeedableRng};
        let seed: u64 = rand::random();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let pieces = [
            "\n", "\r", "\u{85}", "\u{2028}", "\x1b[", "<2>", "/", "..", "{", "}", "\0", "a", " ",
        ];
        let names: Vec<String> = (0..300)
            .map(|i| {
                let mut n = String::new();
                for _ in 0..rng.random_range(0..20) {
                    if rng.random_bool(0.3) {
                        let b: Vec<u8> =
                            (0..rng.random_range(1..6)).map(|_| rng.random()).collect();
                        n.push_str(&String::from_utf8_lossy(&b));
                    } else {
                        n.push_str(pieces[rng.random_range(0..pieces.len())]);
                    }
                }
                if i % 50 == 0 {
                    n.push_str(&"\n".repeat(2000));
                }
                n
            })
            .collect();
        tracing::subscriber::with_default(sub, || {
            tracing::info!(policy = %hostile, key = ?hostile, id = hostile, "asked for {hostile}");
            let err = std::io::Error::other(hostile.to_string());
            tracing::warn!(error = %err, "failed");
            for n in &names {
                tracing::info!(key = %n, "saw {n}");
            }
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.split('\n').filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 2 + names.len(), "seed {seed}");
        assert!(
            lines[0].starts_with("<6>") && lines[1].starts_with("<4>"),
            "{text}"
        );
        for l in &lines {
            assert!(
                l.starts_with("<6>") || l.starts_with("<4>"),
                "seed {seed}: {l:?}"
            );
            assert!(!l.chars().any(needs_escape), "seed {seed}: {l:?}");
        }
    }
}
