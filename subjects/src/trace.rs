//! W3C trace context in NATS headers: the one place Steward writes (`inject`) and reads
//! (`hop`, `context_of`) the `traceparent` and `tracestate` headers of requests, publishes and
//! durable messages.
//!
//! Tracing is off until the process calls [`enable`] (the `steward` binary does when an OTLP
//! endpoint is configured). While it is off every function here returns at once: no header is
//! written, no span is made, so a message costs what it cost before.
//!
//! The sending side calls [`inject`] with the headers it already builds; the serving side makes
//! its span with [`hop`], which makes the span a child of the context the message carries.

use std::sync::atomic::{AtomicBool, Ordering};

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
pub use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C trace-context header.
pub const TRACEPARENT: &str = "traceparent";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns trace-context propagation on for this process (call once, after the tracing layer that
/// exports spans is installed). Also installs the W3C propagator as OpenTelemetry's global one.
pub fn enable() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    ENABLED.store(true, Ordering::Release);
}

/// Whether [`enable`] was called.
#[must_use]
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Writes the context of the current span into `headers` (nothing while tracing is off, or when
/// the current span is not traced).
#[inline]
pub fn inject(headers: &mut HeaderMap) {
    if enabled() {
        inject_span(&Span::current(), headers);
    }
}

/// Writes the context of `span` into `headers` (nothing while tracing is off, or when `span` is
/// not traced).
pub fn inject_span(span: &Span, headers: &mut HeaderMap) {
    if !enabled() || span.is_none() {
        return;
    }
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut Headers(headers));
    }
}

/// The remote context `headers` carry, when tracing is on and they carry a valid one.
#[must_use]
pub fn context_of(headers: Option<&HeaderMap>) -> Option<Context> {
    let headers = headers.filter(|_| enabled())?;
    headers.get(TRACEPARENT)?;
    let cx = TraceContextPropagator::new().extract(&HeaderReader(headers));
    cx.span().span_context().is_valid().then_some(cx)
}

/// The serving side's span for one message: `make()` made a child of the context `headers`
/// carry (a root span when they carry none). While tracing is off `make` is not called and the
/// span is [`Span::none`], which costs nothing to enter.
pub fn hop(headers: Option<&HeaderMap>, make: impl FnOnce() -> Span) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = make();
    if let Some(cx) = context_of(headers) {
        // Fails only when the span is disabled by a filter or already started; it then stays
        // a child of the current span, which is the best available.
        let _ = span.set_parent(cx);
    }
    span
}

/// A span for local work, a child of the current span, only while tracing is on ([`Span::none`]
/// otherwise, and `make` is not called).
pub fn span(make: impl FnOnce() -> Span) -> Span {
    if enabled() {
        make()
    } else {
        Span::none()
    }
}

/// The serving side's span of a request on `subject`: named `<noun>.<verb>` after the subject
/// (`steward.v1.<account>.<noun>.<verb>[.<target>]`), with the subject as a field, a child of
/// the context the request carries ([`hop`]).
pub fn serving(subject: &str, headers: Option<&HeaderMap>) -> Span {
    hop(headers, || {
        let mut parts = subject.splitn(6, '.').skip(3);
        let name = match (parts.next(), parts.next()) {
            (Some(noun), Some(verb)) => format!("{noun}.{verb}"),
            _ => subject.to_owned(),
        };
        tracing::info_span!("serve", otel.name = %name, otel.kind = "server", subject = %subject)
    })
}

/// A span for work that continues a context kept from an earlier message (for example a spec
/// leased after a notice): `make()` made a child of `parent` when tracing is on.
pub fn follow(parent: Option<&Context>, make: impl FnOnce() -> Span) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = make();
    if let Some(cx) = parent {
        let _ = span.set_parent(cx.clone());
    }
    span
}

/// The OpenTelemetry context of `span`, to keep for later work ([`follow`]); `None` while
/// tracing is off or when `span` is not traced.
#[must_use]
pub fn context_of_span(span: &Span) -> Option<Context> {
    if !enabled() || span.is_none() {
        return None;
    }
    let cx = span.context();
    cx.span().span_context().is_valid().then_some(cx)
}

/// The OpenTelemetry context of the current span, to keep for later work ([`follow`]); `None`
/// while tracing is off or when the current span is not traced.
#[must_use]
pub fn current_context() -> Option<Context> {
    if !enabled() {
        return None;
    }
    let cx = Span::current().context();
    cx.span().span_context().is_valid().then_some(cx)
}

struct Headers<'a>(&'a mut HeaderMap);

impl Injector for Headers<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct HeaderReader<'a>(&'a HeaderMap);

impl Extractor for HeaderReader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(async_nats::HeaderValue::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn off_by_default_writes_and_reads_nothing() {
        // `enable` is never called in this test binary.
        let mut h = HeaderMap::new();
        inject(&mut h);
        assert!(h.get(TRACEPARENT).is_none());
        h.insert(TRACEPARENT, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        assert!(context_of(Some(&h)).is_none());
        assert!(hop(Some(&h), || tracing::info_span!("x")).is_none());
    }

    #[test]
    fn header_reader_reads_the_traceparent() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        let cx = TraceContextPropagator::new().extract(&HeaderReader(&h));
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote());
        assert_eq!(sc.trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(sc.span_id().to_string(), "b7ad6b7169203331");
        assert!(HeaderReader(&h).keys().contains(&TRACEPARENT));
    }
}
