//! A strict reader of the Prometheus text exposition format (version 0.0.4), so tests can
//! assert on what `metrics_port` serves. It refuses anything a scraper might choke on, and
//! its errors name the line and what is wrong with it.
//!
//! Checked: `# HELP` / `# TYPE` lines (each at most once per family, before its samples),
//! every family's lines in one group, metric and label names, quoting and escapes of label
//! values, duplicate labels and duplicate series, values (incl. `+Inf`, `-Inf`, `NaN`) and
//! optional timestamps, non-negative counters, and for histograms: `_bucket` lines with `le`
//! increasing and ending at `+Inf`, cumulative counts, `_sum`, and `_count` equal to the
//! `+Inf` bucket. Other `#` lines are comments.

use std::collections::{BTreeMap, HashMap, HashSet};

/// One sample line. For a histogram the name carries its suffix (`_bucket`, `_sum`,
/// `_count`) and buckets keep their `le` label, as in the text.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parse and check a whole scrape.
pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let mut p = Parser::default();
    let lines: Vec<&str> = text.split('\n').collect();
    // split leaves "" after the final newline; anything else there lacks its newline.
    let (last, lines) = lines.split_last().unwrap_or((&"", &[]));
    if !last.is_empty() {
        return Err(format!(
            "line {}: the last line does not end with a newline: {last:?}",
            lines.len() + 1
        ));
    }
    for (i, &line) in lines.iter().enumerate() {
        p.line(i + 1, line)
            .map_err(|e| format!("line {}: {e}: {line:?}", i + 1))?;
    }
    p.check_histograms(lines)?;
    Ok(p.samples.into_iter().map(|(_, _, s)| s).collect())
}

/// The value of the one sample named `name` whose labels include all of `labels`; labels not
/// given are ignored. `None` when no sample matches. Panics when several match: the test has
/// to say which one it means.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut matching = samples.iter().filter(|s| {
        s.name == name
            && labels
                .iter()
                .all(|&(k, v)| s.labels.get(k).map(String::as_str) == Some(v))
    });
    let first = matching.next()?;
    if let Some(second) = matching.next() {
        panic!(
            "{name} with labels {labels:?} is ambiguous: {:?} and {:?} both match",
            first.labels, second.labels
        );
    }
    Some(first.value)
}

/// The sum of every sample named `name`, over all label sets; 0 when there is none.
pub fn sum(samples: &[Sample], name: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

#[derive(Default)]
struct Parser {
    /// Family name → declared type.
    types: HashMap<String, String>,
    /// Families with a `# HELP` line.
    helps: HashSet<String>,
    /// Families that have samples.
    with_samples: HashSet<String>,
    /// The family whose group the last line belonged to.
    current: Option<String>,
    /// Families whose group has ended: seeing them again is an error.
    closed: HashSet<String>,
    /// Every series seen, to refuse duplicates.
    series: HashSet<(String, BTreeMap<String, String>)>,
    /// `(line number, family, sample)` in text order.
    samples: Vec<(usize, String, Sample)>,
}

impl Parser {
    fn line(&mut self, n: usize, line: &str) -> Result<(), String> {
        if line.trim().is_empty() {
            return Ok(());
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            check_metric_name(name)?;
            check_help(help)?;
            self.enter(name)?;
            if self.with_samples.contains(name) {
                return Err(format!("HELP for {name} after its samples"));
            }
            if !self.helps.insert(name.to_string()) {
                return Err(format!("second HELP for {name}"));
            }
            return Ok(());
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split(' ');
            let (Some(name), Some(kind), None) = (words.next(), words.next(), words.next()) else {
                return Err("expected \"# TYPE name type\"".to_string());
            };
            check_metric_name(name)?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(format!("unknown metric type {kind:?}"));
            }
            self.enter(name)?;
            if self.with_samples.contains(name) {
                return Err(format!("TYPE for {name} after its samples"));
            }
            if self
                .types
                .insert(name.to_string(), kind.to_string())
                .is_some()
            {
                return Err(format!("second TYPE for {name}"));
            }
            return Ok(());
        }
        if line.starts_with('#') {
            return Ok(());
        }

        let sample = parse_sample(line)?;
        let family = self.family_of(&sample.name);
        self.enter(&family)?;
        self.with_samples.insert(family.clone());
        match self.types.get(&family).map(String::as_str) {
            Some("counter") if sample.value < 0.0 => {
                return Err(format!("counter {} is negative", sample.name));
            }
            Some("histogram") => check_histogram_sample(&family, &sample)?,
            Some("summary") => check_summary_sample(&family, &sample)?,
            _ => {}
        }
        if !self
            .series
            .insert((sample.name.clone(), sample.labels.clone()))
        {
            return Err(format!(
                "duplicate series {}{:?}",
                sample.name, sample.labels
            ));
        }
        self.samples.push((n, family, sample));
        Ok(())
    }

    /// The family a sample name belongs to: a histogram's or summary's base name for its
    /// suffixed series, else the name itself.
    fn family_of(&self, name: &str) -> String {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                match self.types.get(base).map(String::as_str) {
                    Some("histogram") => return base.to_string(),
                    Some("summary") if suffix != "_bucket" => return base.to_string(),
                    _ => {}
                }
            }
        }
        name.to_string()
    }

    /// Note that a line of `family` follows; its group must not have ended before.
    fn enter(&mut self, family: &str) -> Result<(), String> {
        if self.current.as_deref() == Some(family) {
            return Ok(());
        }
        if self.closed.contains(family) {
            return Err(format!(
                "{family} appears again after other families; a family's lines must be one group"
            ));
        }
        if let Some(previous) = self.current.replace(family.to_string()) {
            self.closed.insert(previous);
        }
        Ok(())
    }

    /// Per histogram series: `le` increasing to `+Inf`, cumulative counts, `_sum` and
    /// `_count` present, `_count` equal to the `+Inf` bucket.
    fn check_histograms(&self, lines: &[&str]) -> Result<(), String> {
        #[derive(Default)]
        struct Series {
            first_line: usize,
            /// `(line, le, count)`
            buckets: Vec<(usize, f64, f64)>,
            sum: Option<usize>,
            count: Option<(usize, f64)>,
        }
        let at = |n: usize, what: String| format!("line {n}: {what}: {:?}", lines[n - 1]);

        let mut all: BTreeMap<(String, BTreeMap<String, String>), Series> = BTreeMap::new();
        for (n, family, s) in &self.samples {
            if self.types.get(family).map(String::as_str) != Some("histogram") {
                continue;
            }
            let mut key = s.labels.clone();
            let le = key.remove("le");
            let series = all.entry((family.clone(), key)).or_default();
            if series.first_line == 0 {
                series.first_line = *n;
            }
            match s.name.strip_prefix(family.as_str()) {
                Some("_bucket") => {
                    // check_histogram_sample made sure le is there and a float.
                    let le = le.as_deref().and_then(parse_float).unwrap_or(f64::NAN);
                    if let Some(&(_, prev_le, prev_count)) = series.buckets.last() {
                        if le <= prev_le {
                            return Err(at(*n, format!("le of {family} does not increase")));
                        }
                        if s.value < prev_count {
                            return Err(at(*n, format!("buckets of {family} are not cumulative")));
                        }
                    }
                    series.buckets.push((*n, le, s.value));
                }
                Some("_sum") => series.sum = Some(*n),
                _ => series.count = Some((*n, s.value)),
            }
        }
        let mut all: Vec<_> = all.into_iter().collect();
        all.sort_by_key(|(_, s)| s.first_line);
        for ((family, labels), s) in all {
            let name = format!("{family}{labels:?}");
            let Some(&(last_line, last_le, inf_count)) = s.buckets.last() else {
                return Err(at(s.first_line, format!("histogram {name} has no buckets")));
            };
            if last_le != f64::INFINITY {
                return Err(at(
                    last_line,
                    format!("the last bucket of {name} is not le=\"+Inf\""),
                ));
            }
            if s.sum.is_none() {
                return Err(at(last_line, format!("histogram {name} has no _sum")));
            }
            let Some((count_line, count)) = s.count else {
                return Err(at(last_line, format!("histogram {name} has no _count")));
            };
            if count != inf_count {
                return Err(at(
                    count_line,
                    format!("_count of {name} is {count} but its +Inf bucket is {inf_count}"),
                ));
            }
        }
        Ok(())
    }
}

fn check_histogram_sample(family: &str, s: &Sample) -> Result<(), String> {
    let le = s.labels.get("le");
    match s.name.strip_prefix(family) {
        Some("_bucket") => {
            let le = le.ok_or("bucket without an le label")?;
            parse_float(le).ok_or_else(|| format!("le={le:?} is not a number"))?;
        }
        Some("_sum") | Some("_count") if le.is_some() => {
            return Err(format!("{} has an le label", s.name));
        }
        Some("_sum") | Some("_count") => {}
        _ => {
            return Err(format!(
                "histogram {family} has a sample without _bucket, _sum or _count"
            ))
        }
    }
    if s.name.ends_with("_sum") {
        return Ok(());
    }
    if s.value < 0.0 || s.value.fract() != 0.0 {
        return Err(format!("{} is not a count: {}", s.name, s.value));
    }
    Ok(())
}

fn check_summary_sample(family: &str, s: &Sample) -> Result<(), String> {
    let q = s.labels.get("quantile");
    if s.name == family {
        let q = q.ok_or("summary sample without a quantile label")?;
        match parse_float(q) {
            Some(q) if (0.0..=1.0).contains(&q) => Ok(()),
            _ => Err(format!("quantile={q:?} is not a number in [0, 1]")),
        }
    } else if q.is_some() {
        Err(format!("{} has a quantile label", s.name))
    } else {
        Ok(())
    }
}

/// `name{label="value",...} value [timestamp]`
fn parse_sample(line: &str) -> Result<Sample, String> {
    let b = line.as_bytes();
    let mut i = 0;
    let take = |i: &mut usize, f: fn(u8) -> bool| {
        let start = *i;
        while *i < b.len() && f(b[*i]) {
            *i += 1;
        }
        &line[start..*i]
    };
    let blanks = |i: &mut usize| take(i, |c| c == b' ' || c == b'\t').len();

    let name = take(&mut i, |c| {
        c.is_ascii_alphanumeric() || c == b'_' || c == b':'
    });
    check_metric_name(name)?;
    let mut gap = blanks(&mut i);
    let mut labels = BTreeMap::new();
    if b.get(i) == Some(&b'{') {
        i += 1;
        loop {
            blanks(&mut i);
            if b.get(i) == Some(&b'}') {
                i += 1;
                break;
            }
            let label = take(&mut i, |c| c.is_ascii_alphanumeric() || c == b'_');
            if !is_label_name(label) {
                return Err(match label {
                    "" => "expected a label name or }".to_string(),
                    _ => format!("invalid label name {label:?}"),
                });
            }
            blanks(&mut i);
            if b.get(i) != Some(&b'=') {
                return Err(format!("expected = after label {label}"));
            }
            i += 1;
            blanks(&mut i);
            if b.get(i) != Some(&b'"') {
                return Err(format!("the value of label {label} is not quoted"));
            }
            i += 1;
            let value = label_value(line, &mut i).map_err(|e| format!("label {label}: {e}"))?;
            if labels.insert(label.to_string(), value).is_some() {
                return Err(format!("duplicate label {label}"));
            }
            blanks(&mut i);
            match b.get(i) {
                Some(b',') => i += 1,
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return Err(format!("expected , or }} after label {label}")),
            }
        }
        gap = blanks(&mut i);
    }
    if gap == 0 {
        return Err("expected a blank before the value".to_string());
    }
    let value = take(&mut i, |c| c != b' ' && c != b'\t');
    let value = parse_float(value).ok_or_else(|| format!("invalid value {value:?}"))?;
    blanks(&mut i);
    let timestamp = take(&mut i, |c| c != b' ' && c != b'\t');
    if !timestamp.is_empty() && timestamp.parse::<i64>().is_err() {
        return Err(format!("invalid timestamp {timestamp:?}"));
    }
    blanks(&mut i);
    if i < b.len() {
        return Err(format!("unexpected {:?} after the value", &line[i..]));
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// A label value after its opening quote, up to and over the closing one; only `\\`, `\"`
/// and `\n` are escapes.
fn label_value(line: &str, i: &mut usize) -> Result<String, String> {
    let b = line.as_bytes();
    let mut value = String::new();
    let mut start = *i;
    while *i < b.len() {
        match b[*i] {
            b'"' => {
                value.push_str(&line[start..*i]);
                *i += 1;
                return Ok(value);
            }
            b'\\' => {
                value.push_str(&line[start..*i]);
                value.push(match b.get(*i + 1) {
                    Some(b'\\') => '\\',
                    Some(b'"') => '"',
                    Some(b'n') => '\n',
                    _ => return Err("invalid escape in value".to_string()),
                });
                *i += 2;
                start = *i;
            }
            _ => *i += 1,
        }
    }
    Err("unterminated value".to_string())
}

/// A value as the format allows: a decimal float, `+Inf`, `-Inf` or `NaN`.
fn parse_float(s: &str) -> Option<f64> {
    match s {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        // Rust also reads "inf" and "nan": allow only the characters of a decimal.
        _ if s.bytes().any(|c| c.is_ascii_digit())
            && s.bytes()
                .all(|c| c.is_ascii_digit() || b".eE+-".contains(&c)) =>
        {
            s.parse().ok()
        }
        _ => None,
    }
}

fn check_help(help: &str) -> Result<(), String> {
    let mut chars = help.chars();
    while let Some(c) = chars.next() {
        if c == '\\' && !matches!(chars.next(), Some('\\' | 'n')) {
            return Err("invalid escape in HELP text (only \\\\ and \\n)".to_string());
        }
    }
    Ok(())
}

fn check_metric_name(name: &str) -> Result<(), String> {
    let mut bytes = name.bytes();
    let ok = bytes
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && bytes.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':');
    if ok {
        Ok(())
    } else {
        Err(format!("invalid metric name {name:?}"))
    }
}

fn is_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && bytes.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}
