//! The `metrics_port` endpoint as pure logic: latency histograms, the Prometheus text
//! exposition format (version 0.0.4), and just enough HTTP/1.x to answer a scrape.
//!
//! The reactor owns the socket: it reads bytes, asks [`parse_request`] whether a request head
//! is complete, renders an [`Exposition`] and writes what [`response`] built. Nothing here
//! blocks, reads the clock or panics on network input; a request head is bounded by
//! [`MAX_REQUEST_HEAD`].

use std::fmt::Write as _;
use std::io::Write as _;

/// Upper bounds of the latency buckets, in milliseconds (rendered in seconds). Sub-millisecond
/// buckets resolve local relays; the long tail shows lock waits and two-phase commits.
pub const LATENCY_BUCKETS_MS: [f64; 14] = [
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 10000.0,
];

/// Largest request head (request line, headers, blank line) read before answering 400.
pub const MAX_REQUEST_HEAD: usize = 8192;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A latency histogram over [`LATENCY_BUCKETS_MS`]. Counts are kept per bucket and made
/// cumulative only when rendered, so [`Histogram::observe`] touches one counter.
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    /// Observations per bucket, not cumulative; the last one is `+Inf`.
    counts: [u64; LATENCY_BUCKETS_MS.len() + 1],
    sum_ms: f64,
}

impl Histogram {
    /// Count one observation of `ms` milliseconds. Called per query: no allocation.
    /// A negative or NaN duration (a clock that went backwards) counts as 0.
    pub fn observe(&mut self, ms: f64) {
        // f64::max returns the other operand when one is NaN.
        let ms = ms.max(0.0);
        let i = LATENCY_BUCKETS_MS
            .iter()
            .position(|&le| ms <= le)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.counts[i] += 1;
        self.sum_ms += ms;
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Sum of all observations, in milliseconds.
    pub fn sum_ms(&self) -> f64 {
        self.sum_ms
    }

    /// Average observation in milliseconds; 0 before the first one.
    pub fn mean_ms(&self) -> f64 {
        match self.count() {
            0 => 0.0,
            n => self.sum_ms / n as f64,
        }
    }

    /// `(upper bound in ms, observations <= bound)` for every bucket, ending with
    /// `(f64::INFINITY, count)`.
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let bounds = LATENCY_BUCKETS_MS.iter().copied().chain([f64::INFINITY]);
        bounds
            .zip(self.counts.iter())
            .scan(0u64, |total, (le, &n)| {
                *total += n;
                Some((le, *total))
            })
    }
}

/// The `# TYPE` of a metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One family's lines: `# HELP`, `# TYPE`, then its samples.
struct Family {
    name: String,
    kind: Option<Kind>,
    text: String,
}

/// A scrape being written in the text exposition format.
///
/// The format wants every family's lines in one group. Each family gets its own section and
/// `finish` joins them, so callers may add samples in whatever order they walk their state
/// (e.g. node by node across several families).
#[derive(Default)]
pub struct Exposition {
    families: Vec<Family>,
}

impl Exposition {
    pub fn new() -> Self {
        Exposition::default()
    }

    /// Declare family `name`: writes `# HELP` and `# TYPE` the first time, nothing after.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        debug_assert!(is_metric_name(name), "invalid metric name {name:?}");
        if let Some(f) = self.families.iter().find(|f| f.name == name) {
            debug_assert!(f.kind == Some(kind), "family {name} declared twice");
            return;
        }
        let mut text = format!("# HELP {name} ");
        for c in help.chars() {
            match c {
                '\\' => text.push_str("\\\\"),
                '\n' => text.push_str("\\n"),
                c => text.push(c),
            }
        }
        text.push('\n');
        text.push_str("# TYPE ");
        text.push_str(name);
        text.push(' ');
        text.push_str(kind.as_str());
        text.push('\n');
        self.families.push(Family {
            name: name.to_string(),
            kind: Some(kind),
            text,
        });
    }

    /// One sample of counter or gauge family `name`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let out = self.section(name, |k| k != Kind::Histogram);
        push_sample(out, name, "", labels, None, value);
    }

    /// One series of histogram family `name` (ending in `_seconds`): `_bucket` lines with
    /// cumulative counts and `le` in seconds, then `_sum` (seconds) and `_count`.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        debug_assert!(
            name.ends_with("_seconds"),
            "histogram {name} is not in seconds"
        );
        debug_assert!(
            labels.iter().all(|&(k, _)| k != "le"),
            "label le is reserved"
        );
        let out = self.section(name, |k| k == Kind::Histogram);
        for (le_ms, n) in h.cumulative() {
            push_sample(out, name, "_bucket", labels, Some(le_ms / 1000.0), n as f64);
        }
        push_sample(out, name, "_sum", labels, None, h.sum_ms() / 1000.0);
        push_sample(out, name, "_count", labels, None, h.count() as f64);
    }

    /// The whole scrape, family after family in the order they were declared.
    pub fn finish(self) -> String {
        let len = self.families.iter().map(|f| f.text.len()).sum();
        let mut out = String::with_capacity(len);
        for f in &self.families {
            out.push_str(&f.text);
        }
        out
    }

    /// The text of family `name`. A family used without `family()` is a bug; in release it
    /// becomes an untyped family, which is still valid output.
    fn section(&mut self, name: &str, kind_ok: impl Fn(Kind) -> bool) -> &mut String {
        let i = match self.families.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                debug_assert!(false, "sample of undeclared family {name}");
                self.families.push(Family {
                    name: name.to_string(),
                    kind: None,
                    text: String::new(),
                });
                self.families.len() - 1
            }
        };
        let f = &mut self.families[i];
        debug_assert!(
            f.kind.is_none_or(kind_ok),
            "wrong kind of sample for {name}"
        );
        &mut f.text
    }
}

/// `name{labels,le="…"} value` and a newline.
fn push_sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &[(&str, &str)],
    le: Option<f64>,
    value: f64,
) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        for (i, &(k, v)) in labels.iter().enumerate() {
            debug_assert!(is_label_name(k), "invalid label name {k:?}");
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            for c in v.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        if let Some(le) = le {
            if !labels.is_empty() {
                out.push(',');
            }
            out.push_str("le=\"");
            push_value(out, le);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    push_value(out, value);
    out.push('\n');
}

/// A float as Prometheus reads it: `+Inf`, `-Inf`, `NaN`, integers without a fraction, plain
/// decimals in the usual range and exponent notation outside it (so 1e300 is not 301 digits).
fn push_value(out: &mut String, v: f64) {
    // Writing to a String cannot fail.
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else if v == 0.0 {
        out.push('0'); // also for -0.0
    } else if (1e-4..1e15).contains(&v.abs()) {
        let _ = write!(out, "{v}");
    } else {
        let _ = write!(out, "{v:e}");
    }
}

fn is_metric_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

fn is_label_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// What the bytes read so far from a metrics connection amount to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpRequest<'a> {
    /// No complete head yet and no reason to give up: read more.
    Incomplete,
    /// A GET (or, with `head`, a HEAD: answer the same without the body). `path` is the
    /// request target without its query string, not percent-decoded.
    Get { path: &'a str, head: bool },
    /// Answer 400 with this text and close.
    Bad(&'static str),
}

/// Parse an HTTP/1.0 or HTTP/1.1 request head at the start of `buf`.
///
/// Lines end in CRLF or a bare LF; empty lines before the request line are skipped (RFC 9112
/// 2.2). The request line is checked as soon as its bytes arrive, so something that is not
/// HTTP at all (a PostgreSQL startup packet, a TLS ClientHello) is refused at once instead of
/// waiting for [`MAX_REQUEST_HEAD`] bytes. Header fields are checked for shape and ignored.
/// Bytes after the head (a body, a pipelined request) are ignored: the answer closes.
pub fn parse_request(buf: &[u8]) -> HttpRequest<'_> {
    let window = &buf[..buf.len().min(MAX_REQUEST_HEAD)];
    let mut request: Option<(&str, bool)> = None;
    for chunk in window.split_inclusive(|&b| b == b'\n') {
        let Some(line) = chunk.strip_suffix(b"\n") else {
            // The last, incomplete line (a CR at its end may begin its CRLF).
            let partial = chunk.strip_suffix(b"\r").unwrap_or(chunk);
            if request.is_none() {
                if let Err(why) = check_partial_request_line(partial) {
                    return HttpRequest::Bad(why);
                }
            }
            break;
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match request {
            None if line.is_empty() => {}
            None => match parse_request_line(line) {
                Ok(r) => request = Some(r),
                Err(why) => return HttpRequest::Bad(why),
            },
            Some((path, head)) if line.is_empty() => return HttpRequest::Get { path, head },
            Some(_) => {
                if !is_header_field(line) {
                    return HttpRequest::Bad("malformed header field");
                }
            }
        }
    }
    if buf.len() >= MAX_REQUEST_HEAD {
        HttpRequest::Bad("request head too large")
    } else {
        HttpRequest::Incomplete
    }
}

/// `method SP request-target SP HTTP-version`, with single spaces as RFC 9112 3 says.
fn parse_request_line(line: &[u8]) -> Result<(&str, bool), &'static str> {
    check_partial_request_line(line)?;
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed request line");
    };
    let head = match method {
        b"GET" => false,
        b"HEAD" => true,
        _ => return Err("method not allowed"),
    };
    if target.is_empty() || !target.iter().all(|&b| b.is_ascii_graphic()) {
        return Err("malformed request line");
    }
    match version {
        b"HTTP/1.0" | b"HTTP/1.1" => {}
        v if v.starts_with(b"HTTP/") => return Err("unsupported HTTP version"),
        _ => return Err("malformed request line"),
    }
    if target.first() != Some(&b'/') {
        return Err("request target must be an absolute path");
    }
    let path = match target.iter().position(|&b| b == b'?') {
        Some(q) => &target[..q],
        None => target,
    };
    // Only visible ASCII got here, so this cannot fail.
    let path = std::str::from_utf8(path).map_err(|_| "malformed request line")?;
    Ok((path, head))
}

/// What can be said of a request line from its first bytes: only printable ASCII, and a
/// method that is (or may still become) GET or HEAD.
fn check_partial_request_line(line: &[u8]) -> Result<(), &'static str> {
    let (method, complete) = match line.iter().position(|&b| b == b' ') {
        Some(sp) => (&line[..sp], true),
        None => (line, false),
    };
    if !method.iter().all(|&b| is_tchar(b))
        || !line
            .iter()
            .all(|&b| b == b' ' || b.is_ascii_graphic() || b == b'\r')
    {
        return Err("malformed request line");
    }
    let allowed = |m: &[u8]| {
        if complete {
            m == b"GET" || m == b"HEAD"
        } else {
            b"GET".starts_with(m) || b"HEAD".starts_with(m)
        }
    };
    if allowed(method) {
        Ok(())
    } else {
        Err("method not allowed")
    }
}

/// `field-name ":" OWS field-value OWS` (RFC 9110 5): a token before the colon, no control
/// characters but HTAB after it. A line folded onto the previous one (leading SP) fails.
fn is_header_field(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    !name.is_empty()
        && name.iter().all(|&b| is_tchar(b))
        && value
            .iter()
            .all(|&b| b == b'\t' || (b >= b' ' && b != 0x7f))
}

/// A character of an HTTP token (RFC 9110 5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Append a complete HTTP/1.1 response to `out`. The connection closes after it, which is
/// also how the client knows the response ended. For HEAD, write the response and then drop
/// the body again: `out.truncate(out.len() - body.len())`.
pub fn response(out: &mut Vec<u8>, status: u16, reason: &str, content_type: &str, body: &[u8]) {
    // Writing to a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {status} {reason}\r\n\
         Content-Type: {content_type}\r\n\
         Content-Length: {}\r\n\
         Connection: close\r\n\
         \r\n",
        body.len()
    );
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buckets(h: &Histogram) -> Vec<u64> {
        h.cumulative().map(|(_, n)| n).collect()
    }

    #[test]
    fn histogram_places_observations_on_upper_bounds() {
        let mut h = Histogram::default();
        h.observe(0.0); // first bucket
        h.observe(0.25); // le is inclusive: still the first
        h.observe(0.2501); // second
        h.observe(10.0); // le=10
        h.observe(10000.0); // last finite bucket
        h.observe(10000.5); // +Inf only
        let b = buckets(&h);
        assert_eq!(b.len(), LATENCY_BUCKETS_MS.len() + 1);
        assert_eq!(&b[..3], &[2, 3, 3]);
        let le10 = LATENCY_BUCKETS_MS.iter().position(|&x| x == 10.0).unwrap();
        assert_eq!(b[le10 - 1], 3);
        assert_eq!(b[le10], 4);
        assert_eq!(b[LATENCY_BUCKETS_MS.len() - 1], 5);
        assert_eq!(b[LATENCY_BUCKETS_MS.len()], 6);
        assert_eq!(h.count(), 6);
        assert!((h.sum_ms() - 20011.0001).abs() < 1e-9);
        let (last_le, last_n) = h.cumulative().last().unwrap();
        assert_eq!((last_le, last_n), (f64::INFINITY, 6));
    }

    #[test]
    fn histogram_treats_negative_and_nan_as_zero() {
        let mut h = Histogram::default();
        h.observe(-3.0);
        h.observe(f64::NAN);
        assert_eq!(buckets(&h)[0], 2);
        assert_eq!(h.count(), 2);
        assert_eq!(h.sum_ms(), 0.0);
        assert_eq!(h.mean_ms(), 0.0);
        h.observe(3.0);
        assert_eq!(h.mean_ms(), 1.0);
        assert_eq!(Histogram::default().mean_ms(), 0.0);
    }

    #[test]
    fn latency_buckets_increase() {
        assert!(LATENCY_BUCKETS_MS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn values_render_as_prometheus_reads_them() {
        let render = |v: f64| {
            let mut s = String::new();
            push_value(&mut s, v);
            s
        };
        assert_eq!(render(0.0), "0");
        assert_eq!(render(-0.0), "0");
        assert_eq!(render(3.0), "3");
        assert_eq!(render(-42.0), "-42");
        assert_eq!(render(123_456_789_012.0), "123456789012");
        assert_eq!(render(0.5), "0.5");
        assert_eq!(render(0.00025), "0.00025");
        assert_eq!(render(1e300), "1e300");
        assert_eq!(render(1.5e-7), "1.5e-7");
        assert_eq!(render(f64::INFINITY), "+Inf");
        assert_eq!(render(f64::NEG_INFINITY), "-Inf");
        assert_eq!(render(f64::NAN), "NaN");
        for v in [0.1 + 0.2, 1e-5, 7e15, 2.5e-4, 9_007_199_254_740_993.0] {
            assert_eq!(render(v).parse::<f64>(), Ok(v), "{v} does not round-trip");
        }
    }

    #[test]
    fn family_with_labels_and_escaping() {
        let mut e = Exposition::new();
        e.family(
            "pgmulti_queries_total",
            Kind::Counter,
            "Queries.\nBy node \\ kind.",
        );
        e.sample(
            "pgmulti_queries_total",
            &[("node", "a\"b\\c\nd"), ("kind", "read")],
            7.0,
        );
        e.family("pgmulti_up", Kind::Gauge, "1 when up.");
        e.sample("pgmulti_up", &[], 1.0);
        // A second declaration writes nothing; the sample joins its family's group.
        e.family("pgmulti_queries_total", Kind::Counter, "ignored");
        e.sample(
            "pgmulti_queries_total",
            &[("node", ""), ("kind", "write")],
            0.5,
        );
        assert_eq!(
            e.finish(),
            "# HELP pgmulti_queries_total Queries.\\nBy node \\\\ kind.\n\
             # TYPE pgmulti_queries_total counter\n\
             pgmulti_queries_total{node=\"a\\\"b\\\\c\\nd\",kind=\"read\"} 7\n\
             pgmulti_queries_total{node=\"\",kind=\"write\"} 0.5\n\
             # HELP pgmulti_up 1 when up.\n\
             # TYPE pgmulti_up gauge\n\
             pgmulti_up 1\n"
        );
    }

    #[test]
    fn histogram_renders_cumulative_buckets_in_seconds() {
        let mut h = Histogram::default();
        for ms in [0.1, 0.3, 0.3, 7.0, 20_000.0] {
            h.observe(ms);
        }
        let mut e = Exposition::new();
        e.family(
            "pgmulti_query_duration_seconds",
            Kind::Histogram,
            "Query latency.",
        );
        e.histogram("pgmulti_query_duration_seconds", &[("node", "n1")], &h);
        let text = e.finish();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2 + LATENCY_BUCKETS_MS.len() + 1 + 2);
        assert_eq!(lines[1], "# TYPE pgmulti_query_duration_seconds histogram");
        assert_eq!(
            &lines[2..6],
            [
                "pgmulti_query_duration_seconds_bucket{node=\"n1\",le=\"0.00025\"} 1",
                "pgmulti_query_duration_seconds_bucket{node=\"n1\",le=\"0.0005\"} 3",
                "pgmulti_query_duration_seconds_bucket{node=\"n1\",le=\"0.001\"} 3",
                "pgmulti_query_duration_seconds_bucket{node=\"n1\",le=\"0.0025\"} 3",
            ]
        );
        assert!(text.contains("_bucket{node=\"n1\",le=\"0.01\"} 4\n"));
        assert!(text.contains("_bucket{node=\"n1\",le=\"10\"} 4\n"));
        assert!(text.ends_with(
            "pgmulti_query_duration_seconds_bucket{node=\"n1\",le=\"+Inf\"} 5\n\
             pgmulti_query_duration_seconds_sum{node=\"n1\"} 20.0077\n\
             pgmulti_query_duration_seconds_count{node=\"n1\"} 5\n"
        ));
    }

    #[test]
    fn histogram_without_labels_has_only_le() {
        let mut e = Exposition::new();
        e.family("x_seconds", Kind::Histogram, "h");
        e.histogram("x_seconds", &[], &Histogram::default());
        let text = e.finish();
        assert!(text.contains("\nx_seconds_bucket{le=\"0.00025\"} 0\n"));
        assert!(text
            .contains("\nx_seconds_bucket{le=\"+Inf\"} 0\nx_seconds_sum 0\nx_seconds_count 0\n"));
    }

    #[test]
    fn parse_complete_requests() {
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\nHost: localhost:9187\r\nAccept: */*\r\n\r\n"),
            HttpRequest::Get {
                path: "/metrics",
                head: false
            }
        );
        assert_eq!(
            parse_request(b"HEAD / HTTP/1.0\r\n\r\n"),
            HttpRequest::Get {
                path: "/",
                head: true
            }
        );
        // Bytes after the head do not matter.
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\n\r\nGET /x HTTP/1.1\r\n"),
            HttpRequest::Get {
                path: "/metrics",
                head: false
            }
        );
        // Leading empty lines are skipped.
        assert_eq!(
            parse_request(b"\r\n\nGET /metrics HTTP/1.1\r\n\r\n"),
            HttpRequest::Get {
                path: "/metrics",
                head: false
            }
        );
    }

    #[test]
    fn parse_strips_query_string() {
        assert_eq!(
            parse_request(b"GET /metrics?name[]=up&x=%20 HTTP/1.1\r\n\r\n"),
            HttpRequest::Get {
                path: "/metrics",
                head: false
            }
        );
        assert_eq!(
            parse_request(b"GET /? HTTP/1.1\r\n\r\n"),
            HttpRequest::Get {
                path: "/",
                head: false
            }
        );
    }

    #[test]
    fn parse_accepts_bare_lf() {
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\nHost: x\n\n"),
            HttpRequest::Get {
                path: "/metrics",
                head: false
            }
        );
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\nHost: x\n\r\n"),
            HttpRequest::Get {
                path: "/metrics",
                head: false
            }
        );
    }

    #[test]
    fn parse_waits_for_the_whole_head() {
        let req =
            b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nUser-Agent: Prometheus/2.45\r\n\r\n";
        for n in 0..req.len() {
            assert_eq!(
                parse_request(&req[..n]),
                HttpRequest::Incomplete,
                "after {n} bytes"
            );
        }
        assert_eq!(
            parse_request(req),
            HttpRequest::Get {
                path: "/metrics",
                head: false
            }
        );
        // Byte by byte into a growing buffer, as the reactor would.
        let mut buf = Vec::new();
        for (i, &b) in req.iter().enumerate() {
            buf.push(b);
            let done = parse_request(&buf) != HttpRequest::Incomplete;
            assert_eq!(done, i == req.len() - 1, "after byte {i}");
        }
    }

    #[test]
    fn parse_rejects_oversized_heads() {
        let mut req = b"GET /metrics HTTP/1.1\r\n".to_vec();
        while req.len() < MAX_REQUEST_HEAD {
            req.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert_eq!(
            parse_request(&req[..MAX_REQUEST_HEAD - 1]),
            HttpRequest::Incomplete
        );
        assert_eq!(
            parse_request(&req),
            HttpRequest::Bad("request head too large")
        );
        // Ending after the limit is too late too.
        req.extend_from_slice(b"\r\n");
        assert_eq!(
            parse_request(&req),
            HttpRequest::Bad("request head too large")
        );
        // A head of exactly MAX_REQUEST_HEAD bytes is fine.
        let mut exact = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        exact.resize(MAX_REQUEST_HEAD - 4, b'a');
        exact.extend_from_slice(b"\r\n\r\n");
        assert_eq!(exact.len(), MAX_REQUEST_HEAD);
        assert_eq!(
            parse_request(&exact),
            HttpRequest::Get {
                path: "/metrics",
                head: false
            }
        );
        // A request line that never ends.
        let mut long = b"GET /".to_vec();
        long.resize(MAX_REQUEST_HEAD + 100, b'a');
        assert_eq!(
            parse_request(&long),
            HttpRequest::Bad("request head too large")
        );
    }

    #[test]
    fn parse_rejects_methods_other_than_get_and_head() {
        let bad = HttpRequest::Bad("method not allowed");
        assert_eq!(parse_request(b"POST /metrics HTTP/1.1\r\n\r\n"), bad);
        assert_eq!(parse_request(b"get /metrics HTTP/1.1\r\n\r\n"), bad);
        assert_eq!(parse_request(b"GETS /metrics HTTP/1.1\r\n\r\n"), bad);
        // Known as soon as the first bytes arrive.
        assert_eq!(parse_request(b"P"), bad);
        assert_eq!(parse_request(b"DELETE"), bad);
        assert_eq!(parse_request(b"GE"), HttpRequest::Incomplete);
        assert_eq!(parse_request(b"HEAD"), HttpRequest::Incomplete);
    }

    /// Found by fuzz/ (metrics_http): an empty line may come first, and its CR alone must
    /// not be refused before its LF arrives.
    #[test]
    fn a_cr_alone_waits_for_its_lf() {
        assert_eq!(parse_request(b"\r"), HttpRequest::Incomplete);
        assert_eq!(parse_request(b"GET /a\r"), HttpRequest::Incomplete);
        assert!(matches!(
            parse_request(b"\r\nHEAD /metrics?x=1 HTTP/1.0\n\n"),
            HttpRequest::Get { head: true, .. }
        ));
    }

    #[test]
    fn parse_rejects_garbage() {
        let malformed = HttpRequest::Bad("malformed request line");
        // A PostgreSQL SSLRequest and a TLS ClientHello are refused on their first bytes.
        assert_eq!(parse_request(b"\0\0\0\x08\x04\xd2\x16\x2f"), malformed);
        assert_eq!(parse_request(b"\x16\x03\x01\x02\x00"), malformed);
        assert_eq!(parse_request(b"GET /\x00"), malformed);
        assert_eq!(
            parse_request(b"GET /m\xc3\xa9trics HTTP/1.1\r\n\r\n"),
            malformed
        );
        assert_eq!(parse_request(b"GET  /metrics HTTP/1.1\r\n\r\n"), malformed);
        assert_eq!(parse_request(b"GET /metrics\r\n\r\n"), malformed);
        assert_eq!(parse_request(b"GET /metrics HTTP/1.1 x\r\n\r\n"), malformed);
        assert_eq!(parse_request(b"GET /metrics FTP/1.1\r\n\r\n"), malformed);
        assert_eq!(parse_request(b"GET /a\rb HTTP/1.1\r\n\r\n"), malformed);
        assert_eq!(
            parse_request(b"GET /metrics HTTP/2.0\r\n\r\n"),
            HttpRequest::Bad("unsupported HTTP version")
        );
        assert_eq!(
            parse_request(b"GET http://host/metrics HTTP/1.1\r\n\r\n"),
            HttpRequest::Bad("request target must be an absolute path")
        );
        let bad_header = HttpRequest::Bad("malformed header field");
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\nno colon\r\n\r\n"),
            bad_header
        );
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\nHost : x\r\n\r\n"),
            bad_header
        );
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\n: x\r\n\r\n"), bad_header);
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n"),
            bad_header
        );
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\nA: b\0c\r\n\r\n"),
            bad_header
        );
        // Non-ASCII in a header value is obs-text and allowed; the header is not used anyway.
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\nUser-Agent: caf\xc3\xa9\t1\r\n\r\n"),
            HttpRequest::Get {
                path: "/",
                head: false
            }
        );
    }

    #[test]
    fn random_bytes_never_panic_parse_request() {
        let mut rng = crate::protocol::describe::tests::Rng::new(11);
        let seed = b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n";
        for _ in 0..20_000 {
            let _ = parse_request(&rng.bytes(48));
            let _ = parse_request(&rng.mutate(seed));
        }
    }

    #[test]
    fn response_has_length_and_closes() {
        let mut out = Vec::new();
        response(&mut out, 200, "OK", CONTENT_TYPE, b"up 1\n");
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\n\
              Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
              Content-Length: 5\r\n\
              Connection: close\r\n\
              \r\n\
              up 1\n"
        );
        // HEAD: the same head, no body.
        let mut head = Vec::new();
        response(&mut head, 200, "OK", CONTENT_TYPE, b"up 1\n");
        head.truncate(head.len() - 5);
        assert!(head.ends_with(b"Content-Length: 5\r\nConnection: close\r\n\r\n"));
    }
}
