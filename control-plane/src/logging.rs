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
        }
    }
}

pub struct PlainVisitor<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl PlainVisitor<'_> {
    fn separate(&mut self) -> fmt::Result {
        if self.first {
            self.first = false;
            Ok(())
        } else {
            self.writer.write_char(' ')
        }
    }

    fn name(&mut self, field: &Field) -> fmt::Result {
        self.separate()?;
        if field.name() != "message" {
            self.writer.write_str(field.name())?;
            self.writer.write_char('=')?;
        }
        Ok(())
    }
}

impl Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_ok() {
            self.result = self.name(field).and_then(|()| {
                if is_plain(value) {
                    self.writer.write_str(value)
                } else {
                    write!(self.writer, "{value:?}")
                }
            });
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_ok() {
            self.result = self
                .name(field)
                .and_then(|()| write!(self.writer, "{value:?}"));
        }
    }
}

/// Text that reads back as one value without quotes: no spaces, quotes, `=` or control
/// characters (a request id, a route template, a tenant id).
fn is_plain(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:@+,{}".contains(&b))
}

impl VisitOutput<fmt::Result> for PlainVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for PlainVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
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
    }
}
