//! Logging: `tracing` to stderr, text by default or JSON (`--log-format
//! json`) for shipping. Colours only on a terminal. Under systemd (stderr
//! connected to the journal, `$JOURNAL_STREAM` set) each text line starts
//! with its syslog priority (`<3>` error … `<7>` debug), which journald
//! reads as the entry's priority, and carries no timestamp of its own (the
//! journal has one). Never log a secret: key material lives in `Secret`,
//! whose `Debug`/`Display` print `[redacted]`.

use std::fmt;
use std::io::IsTerminal;

use clap::ValueEnum;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{DefaultFields, Format, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
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
            .fmt_fields(DefaultFields::new())
            .event_format(JournalPrefix(
                Format::default()
                    .without_time()
                    .with_target(false)
                    .with_level(false),
            ))
            .try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
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
}
