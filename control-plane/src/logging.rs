//! How log lines are written: the `tracing` subscriber of the `silo` binary.
//!
//! Logs go to stderr through a background thread (a request never waits on the terminal,
//! a pipe or the journal), and fields are written plainly as `name=value`. The plain field
//! writer exists for the request span: every request opens one (request id, method, route,
//! then the tenant), and the subscriber writes its fields out when it opens. The default
//! writer passes every name through an ANSI painter, colours or not, and every value
//! through the formatting machinery; that was a fifth of the instructions of a request
//! that does nothing (callgrind, docs/benchmarks.md). Plain text values (ids, route
//! templates, names of things) are copied as they are; any other text is quoted and
//! escaped, so a value a client chose (a request id, a path) cannot pose as another field
//! or another line.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::Writer;

/// Installs the process's subscriber (`SILO_LOG` filters, default `info`). The guard flushes
/// what is queued when dropped: hold it until the process ends.
pub fn init() -> tracing_appender::non_blocking::WorkerGuard {
    // Not lossy: under a burst beyond the queue (128k lines) logging threads wait rather
    // than drop lines.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("silo-log")
        .finish(std::io::stderr());
    tracing_subscriber::fmt()
        .fmt_fields(PlainFields)
        .with_env_filter(
            EnvFilter::try_from_env("SILO_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    guard
}

/// Fields as `name=value`, separated by spaces; the message alone, first.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlainFields;

impl<'w> MakeVisitor<Writer<'w>> for PlainFields {
    type Visitor = PlainVisitor<'w>;

    fn make_visitor(&self, writer: Writer<'w>) -> PlainVisitor<'w> {
        PlainVisitor {
            writer,
            first: true,
            result: Ok(()),
            buf: [0; BUFFERED],
            len: 0,
        }
    }
}

/// Bytes of fields gathered before they go to the writer: a request span's fields fit, and
/// go out as one write (eleven small writes into a growing `String` were half the cost of
/// opening the span).
const BUFFERED: usize = 192;

pub struct PlainVisitor<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
    buf: [u8; BUFFERED],
    len: usize,
}

impl PlainVisitor<'_> {
    fn push(&mut self, text: &str) -> fmt::Result {
        if self.len + text.len() > BUFFERED {
            self.flush()?;
            if text.len() > BUFFERED {
                return self.writer.write_str(text);
            }
        }
        self.buf[self.len..self.len + text.len()].copy_from_slice(text.as_bytes());
        self.len += text.len();
        Ok(())
    }

    /// Writes out what is gathered: whole `str`s, so valid UTF-8.
    fn flush(&mut self) -> fmt::Result {
        let gathered = std::str::from_utf8(&self.buf[..self.len]).map_err(|_| fmt::Error)?;
        self.len = 0;
        self.writer.write_str(gathered)
    }

    fn name(&mut self, field: &Field) -> fmt::Result {
        if self.first {
            self.first = false;
        } else {
            self.push(" ")?;
        }
        if field.name() != "message" {
            self.push(field.name())?;
            self.push("=")?;
        }
        Ok(())
    }
}

impl Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_ok() {
            self.result = self.name(field).and_then(|()| {
                if is_plain(value) {
                    self.push(value)
                } else {
                    self.flush()?;
                    write!(self.writer, "{value:?}")
                }
            });
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_ok() {
            self.result = self.name(field).and_then(|()| {
                self.flush()?;
                write!(self.writer, "{value:?}")
            });
        }
    }
}

/// Text that reads back as one value without quotes: no spaces, quotes, `=` or control
/// characters (a request id, a route template, a tenant id).
fn is_plain(value: &str) -> bool {
    // One `matches!` (a range check and a bit test a byte), not a search of a list of
    // punctuation for every byte: this runs over every field of every request span.
    !value.is_empty()
        && value.bytes().all(|b| {
            matches!(b, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9'
                | b'-' | b'_' | b'.' | b'/' | b':' | b'@' | b'+' | b',' | b'{' | b'}')
        })
}

impl VisitOutput<fmt::Result> for PlainVisitor<'_> {
    fn finish(mut self) -> fmt::Result {
        self.result?;
        self.flush()
    }
}

impl VisitFmt for PlainVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        // Whoever writes directly comes after what is gathered.
        if self.result.is_ok() {
            self.result = self.flush();
        }
        &mut self.writer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::fmt::FormatFields as _;

    /// What a line's fields look like: the message bare, then `name=value`, text unquoted.
    #[test]
    fn fields_are_written_plainly() {
        let subscriber = tracing_subscriber::registry();
        let out = std::sync::Arc::new(parking_lot::Mutex::new(String::new()));
        struct Capture(std::sync::Arc<parking_lot::Mutex<String>>);
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
            fn on_event(
                &self,
                event: &tracing::Event<'_>,
                _: tracing_subscriber::layer::Context<'_, S>,
            ) {
                let mut line = String::new();
                let _ = PlainFields.format_fields(Writer::new(&mut line), event);
                *self.0.lock() = line;
            }
        }
        use tracing_subscriber::layer::SubscriberExt as _;
        let subscriber = subscriber.with(Capture(out.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(route = "/admin/v1/tenants/{id}", status = 200, id = %"ab12", "request done");
        });
        assert_eq!(
            *out.lock(),
            "request done route=/admin/v1/tenants/{id} status=200 id=ab12"
        );
        // Text a client could have chosen is quoted and escaped: it cannot forge a field.
        tracing::subscriber::with_default(
            tracing_subscriber::registry().with(Capture(out.clone())),
            || tracing::info!(request_id = "x tenant_id=other\nforged", "m"),
        );
        assert_eq!(*out.lock(), r#"m request_id="x tenant_id=other\nforged""#);
        // Past the gathering buffer, in order.
        let long = "a".repeat(BUFFERED + 10);
        tracing::subscriber::with_default(
            tracing_subscriber::registry().with(Capture(out.clone())),
            || tracing::info!(first = "1", long = long.as_str(), last = "z", "m"),
        );
        assert_eq!(*out.lock(), format!("m first=1 long={long} last=z"));
    }
}
