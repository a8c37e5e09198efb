//! Profiles people can look at: folded stacks (`comm;a;b;c 12`, root first, as stored in a
//! document's `tracer_data.folded`) rendered as an SVG flame graph (inferno) or as pprof
//! (a gzip'd `perftools.profiles.Profile`, for `go tool pprof`, Pyroscope, Speedscope).
//!
//! WIT-free and pure: `http/profiles.rs` renders on demand from the stored text, so
//! nothing here is kept. Bad input lines are skipped and counted, never a panic: the text
//! comes from a document any plugin may have written.

use std::collections::HashMap;
use std::io::Write as _;

use inferno::flamegraph::{self, color};

use super::model::Mode;

/// SVG width in pixels: wide enough for kernel symbol names, small enough for a laptop.
const SVG_WIDTH: usize = 1600;

/// Folded stacks longer than this many frames are cut (a corrupt or hostile document).
const MAX_FRAMES: usize = 512;

/// Kernel frames carry this suffix in folded stacks (Brendan Gregg's convention).
const KERNEL_SUFFIX: &str = "_[k]";

/// Parsed folded stacks.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Folded<'a> {
    /// `(stack, value)`: `stack` is the `;`-joined frames, root first.
    pub lines: Vec<(&'a str, u64)>,
    /// Lines that were neither blank, a `#` comment, nor `stack count`.
    pub skipped: usize,
}

impl Folded<'_> {
    /// The sum of the values.
    pub fn total(&self) -> u64 {
        self.lines
            .iter()
            .fold(0u64, |sum, (_, value)| sum.saturating_add(*value))
    }
}

/// Parses folded text. A line is `frames count` with `frames` non-empty and `count` an
/// unsigned integer; lines with a zero count are valid and dropped.
pub fn parse_folded(text: &str) -> Folded<'_> {
    let mut folded = Folded::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parsed = line.rsplit_once(' ').and_then(|(stack, count)| {
            let stack = stack.trim_end();
            let value = count.parse::<u64>().ok()?;
            (!stack.is_empty() && stack.split(';').all(|f| !f.is_empty())).then_some((stack, value))
        });
        match parsed {
            Some((_, 0)) => {}
            Some(line) => folded.lines.push(line),
            None => folded.skipped += 1,
        }
    }
    folded
}

/// What a rendering says about the profile besides its stacks.
#[derive(Debug, Clone)]
pub struct ProfileInfo {
    /// The flame graph's title, e.g. `cpu_profile 0f3a…`.
    pub title: String,
    pub mode: Mode,
    /// 0 when unknown: the pprof period is then left out.
    pub frequency_hz: u32,
    pub duration_ns: u64,
    /// When the profile was taken (Unix ns), 0 when unknown.
    pub time_ns: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("cannot render the flame graph: {0}")]
    Svg(std::io::Error),
    #[error("cannot compress the pprof profile: {0}")]
    Gzip(std::io::Error),
}

/// An SVG flame graph (interactive: inferno's embedded script zooms and searches).
pub fn svg(folded: &Folded<'_>, info: &ProfileInfo) -> Result<Vec<u8>, RenderError> {
    let (count_name, palette) = match info.mode {
        Mode::OnCpu => (
            "samples",
            // Perl's palette colours `_[k]` frames orange, C++ yellow, the rest red.
            color::Palette::Multi(color::MultiPalette::Perl),
        ),
        Mode::OffCpu => ("ns", color::Palette::Basic(color::BasicPalette::Io)),
    };
    let total = folded.total();
    if total == 0 {
        return Ok(empty_svg(&info.title));
    }
    let mut options = flamegraph::Options::default();
    options.title = info.title.clone();
    options.subtitle = Some(subtitle(info, total));
    options.count_name = count_name.to_owned();
    options.colors = palette;
    // Colours from the name's hash: the same frame looks the same on every request.
    options.hash = true;
    options.image_width = Some(SVG_WIDTH);
    let lines: Vec<String> = folded
        .lines
        .iter()
        .map(|(stack, value)| format!("{} {value}", capped(stack)))
        .collect();
    let mut out = Vec::new();
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut out)
        .map_err(RenderError::Svg)?;
    Ok(out)
}

fn subtitle(info: &ProfileInfo, total: u64) -> String {
    let what = match info.mode {
        Mode::OnCpu => format!("on-CPU, {total} samples"),
        Mode::OffCpu => format!("off-CPU, {:.3} s blocked", total as f64 / 1e9),
    };
    let mut parts = vec![what];
    if info.frequency_hz > 0 && info.mode == Mode::OnCpu {
        parts.push(format!("{} Hz", info.frequency_hz));
    }
    if info.duration_ns > 0 {
        parts.push(format!("over {:.1} s", info.duration_ns as f64 / 1e9));
    }
    parts.join(", ")
}

/// The stack with at most [`MAX_FRAMES`] frames (the leafmost are cut).
fn capped(stack: &str) -> &str {
    match stack.match_indices(';').nth(MAX_FRAMES - 1) {
        Some((at, _)) => &stack[..at],
        None => stack,
    }
}

/// A valid SVG saying there is nothing to draw (inferno would fail on empty input).
fn empty_svg(title: &str) -> Vec<u8> {
    let title = xml_escape(title);
    format!(
        "<?xml version=\"1.0\" standalone=\"no\"?>\n\
         <svg version=\"1.1\" width=\"{SVG_WIDTH}\" height=\"80\" viewBox=\"0 0 {SVG_WIDTH} 80\" \
         xmlns=\"http://www.w3.org/2000/svg\">\
         <rect x=\"0\" y=\"0\" width=\"100%\" height=\"100%\" fill=\"#eeeeee\"/>\
         <text x=\"50%\" y=\"30\" text-anchor=\"middle\" font-family=\"Verdana\" font-size=\"17\">{title}</text>\
         <text x=\"50%\" y=\"60\" text-anchor=\"middle\" font-family=\"Verdana\" font-size=\"12\">no samples in this profile</text>\
         </svg>\n"
    )
    .into_bytes()
}

fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// The subset of `perftools.profiles` (`profile.proto`) a sampled call-stack profile needs.
/// Field tags are the upstream file's; fields left out are optional there.
pub mod pprof {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        /// Index 0 is always "".
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub period: i64,
        /// String table indexes.
        #[prost(int64, repeated, tag = "13")]
        pub comment: Vec<i64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        /// String table index.
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        /// Leaf first.
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        /// One per `sample_type`.
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        /// Non-zero.
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        /// Non-zero.
        #[prost(uint64, tag = "1")]
        pub id: u64,
        /// String table indexes.
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
    }
}

/// Interns strings into a pprof string table (index 0 = "").
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Self {
        Self {
            table: vec![String::new()],
            index: HashMap::from([(String::new(), 0)]),
        }
    }

    fn get(&mut self, s: &str) -> i64 {
        if let Some(i) = self.index.get(s) {
            return *i;
        }
        let i = self.table.len() as i64;
        self.table.push(s.to_owned());
        self.index.insert(s.to_owned(), i);
        i
    }
}

/// The profile as a `perftools.profiles.Profile`: one location and one function per
/// distinct frame name; one sample per folded line.
pub fn pprof_profile(folded: &Folded<'_>, info: &ProfileInfo) -> pprof::Profile {
    let mut strings = Strings::new();
    let (sample_type, period_type, period) = match info.mode {
        Mode::OnCpu => (
            ("samples", "count"),
            ("cpu", "nanoseconds"),
            if info.frequency_hz > 0 {
                1_000_000_000 / i64::from(info.frequency_hz)
            } else {
                0
            },
        ),
        // Off-CPU values are blocked time already; there is no sampling period.
        Mode::OffCpu => (("off_cpu", "nanoseconds"), ("off_cpu", "nanoseconds"), 1),
    };
    let mut value_type = |(t, u): (&str, &str)| pprof::ValueType {
        r#type: strings.get(t),
        unit: strings.get(u),
    };
    let sample_type = value_type(sample_type);
    let period_type = value_type(period_type);
    let kernel_file = strings.get("[kernel.kallsyms]");
    let mut ids: HashMap<&str, u64> = HashMap::new();
    let mut locations = Vec::new();
    let mut functions = Vec::new();
    let mut samples = Vec::with_capacity(folded.lines.len());
    for (stack, value) in &folded.lines {
        let mut location_id: Vec<u64> = capped(stack)
            .split(';')
            .map(|frame| {
                *ids.entry(frame).or_insert_with(|| {
                    let id = locations.len() as u64 + 1;
                    let (name, filename) = match frame.strip_suffix(KERNEL_SUFFIX) {
                        Some(name) => (name, kernel_file),
                        None => (frame, 0),
                    };
                    let name = strings.get(name);
                    functions.push(pprof::Function {
                        id,
                        name,
                        system_name: name,
                        filename,
                    });
                    locations.push(pprof::Location {
                        id,
                        line: vec![pprof::Line {
                            function_id: id,
                            line: 0,
                        }],
                    });
                    id
                })
            })
            .collect();
        // Folded stacks are root first; pprof wants the leaf first.
        location_id.reverse();
        samples.push(pprof::Sample {
            location_id,
            value: vec![i64::try_from(*value).unwrap_or(i64::MAX)],
        });
    }
    let comment = vec![strings.get(&info.title)];
    pprof::Profile {
        sample_type: vec![sample_type],
        sample: samples,
        location: locations,
        function: functions,
        string_table: strings.table,
        time_nanos: i64::try_from(info.time_ns).unwrap_or(0),
        duration_nanos: i64::try_from(info.duration_ns).unwrap_or(0),
        period_type: Some(period_type),
        period,
        comment,
    }
}

/// [`pprof_profile`], encoded and gzip'd (what `go tool pprof` reads).
pub fn pprof_gz(folded: &Folded<'_>, info: &ProfileInfo) -> Result<Vec<u8>, RenderError> {
    use prost::Message as _;
    let raw = pprof_profile(folded, info).encode_to_vec();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&raw).map_err(RenderError::Gzip)?;
    gz.finish().map_err(RenderError::Gzip)
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use prost::Message as _;

    use super::*;

    const CANNED: &str = "\
perl;main;burn 40
perl;main;burn;__x64_sys_getpid_[k] 2
perl;entry_SYSCALL_64_[k];do_syscall_64_[k] 7

# a comment
not a folded line
perl;main 3x
;empty;frame 1
sh;a<b>&c 5
idle;swapper 0
";

    fn info(mode: Mode) -> ProfileInfo {
        ProfileInfo {
            title: "cpu_profile <0123abcd>".to_owned(),
            mode,
            frequency_hz: 99,
            duration_ns: 2_000_000_000,
            time_ns: 1_700_000_000_000_000_000,
        }
    }

    /// Well-formed XML (every tag closed, entities valid); the text and attribute values.
    fn xml_texts(svg: &[u8]) -> Vec<String> {
        let mut reader = quick_xml::Reader::from_reader(svg);
        let mut texts = Vec::new();
        let mut depth = 0i32;
        let mut saw_svg = false;
        let mut buf = Vec::new();
        loop {
            match reader.read_event_into(&mut buf).expect("well-formed XML") {
                quick_xml::events::Event::Start(e) => {
                    saw_svg |= e.name().as_ref() == b"svg";
                    depth += 1;
                }
                quick_xml::events::Event::End(_) => depth -= 1,
                quick_xml::events::Event::Text(t) => {
                    texts.push(t.decode().expect("text").into_owned());
                }
                quick_xml::events::Event::GeneralRef(r) => {
                    texts.push(format!("&{};", String::from_utf8_lossy(&r)));
                }
                quick_xml::events::Event::Eof => break,
                _ => {}
            }
            buf.clear();
        }
        assert_eq!(depth, 0, "unbalanced tags");
        assert!(saw_svg, "an <svg> root");
        texts
    }

    #[test]
    fn bad_lines_are_skipped_and_counted() {
        let folded = parse_folded(CANNED);
        assert_eq!(
            folded.lines,
            vec![
                ("perl;main;burn", 40),
                ("perl;main;burn;__x64_sys_getpid_[k]", 2),
                ("perl;entry_SYSCALL_64_[k];do_syscall_64_[k]", 7),
                ("sh;a<b>&c", 5),
            ]
        );
        assert_eq!(folded.skipped, 3);
        assert_eq!(folded.total(), 54);
        assert_eq!(parse_folded("").lines, vec![]);
        assert_eq!(parse_folded("a 18446744073709551616").skipped, 1);
        assert_eq!(parse_folded("a;b   7\r\n").lines, vec![("a;b", 7)]);
    }

    #[test]
    fn svg_is_xml_with_the_frames_and_title() {
        let svg = svg(&parse_folded(CANNED), &info(Mode::OnCpu)).expect("renders");
        let text = String::from_utf8(svg.clone()).expect("UTF-8");
        assert!(text.contains("<svg"));
        let texts = xml_texts(&svg).join("\n");
        // Frame titles are `name (n samples, p%)`; inferno shows kernel frames without
        // their `_[k]` (it colours them instead).
        for frame in [
            "burn (42 samples",
            "main (42 samples",
            "do_syscall_64 (7 samples",
            "perl (49",
        ] {
            assert!(texts.contains(frame), "{frame} missing: {texts}");
        }
        // Names with markup are escaped, not injected.
        assert!(!text.contains("a<b>"));
        assert!(text.contains("a&lt;b&gt;&amp;c"));
        assert!(texts.contains("cpu_profile"), "title: {texts}");
        assert!(texts.contains("54 samples"), "subtitle: {texts}");
    }

    #[test]
    fn empty_and_hostile_input_still_render() {
        let svg = svg(&parse_folded("garbage\n"), &info(Mode::OffCpu)).expect("renders");
        let texts = xml_texts(&svg).join(" ");
        assert!(texts.contains("no samples"), "{texts}");
        let deep = format!("{} 1\n", vec!["f"; 5000].join(";"));
        let svg = svg_of(&deep);
        xml_texts(&svg);
        let profile = pprof_profile(&parse_folded(&deep), &info(Mode::OnCpu));
        assert_eq!(profile.sample[0].location_id.len(), MAX_FRAMES);
    }

    fn svg_of(text: &str) -> Vec<u8> {
        svg(&parse_folded(text), &info(Mode::OnCpu)).expect("renders")
    }

    #[test]
    fn pprof_round_trips_with_the_totals() {
        let folded = parse_folded(CANNED);
        let gz = pprof_gz(&folded, &info(Mode::OnCpu)).expect("encodes");
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut raw)
            .expect("gzip");
        let profile = pprof::Profile::decode(&raw[..]).expect("decodes");
        let s = |i: i64| profile.string_table[i as usize].as_str();
        assert_eq!(profile.string_table[0], "");
        assert_eq!(profile.sample_type.len(), 1);
        assert_eq!(s(profile.sample_type[0].r#type), "samples");
        assert_eq!(s(profile.sample_type[0].unit), "count");
        let period_type = profile.period_type.clone().expect("period type");
        assert_eq!(
            (s(period_type.r#type), s(period_type.unit)),
            ("cpu", "nanoseconds")
        );
        assert_eq!(profile.period, 1_000_000_000 / 99);
        assert_eq!(profile.duration_nanos, 2_000_000_000);
        let total: i64 = profile.sample.iter().map(|x| x.value[0]).sum();
        assert_eq!(total, 54);
        // One location per distinct frame name: perl, main, burn, getpid, entry, do_syscall,
        // sh, a<b>&c.
        assert_eq!(profile.location.len(), 8);
        assert_eq!(profile.function.len(), 8);
        // Leaf first; kernel frames lose the suffix and name the kernel as their file.
        let name_of = |location: u64| {
            let f = &profile.function[location as usize - 1];
            (s(f.name), s(f.filename))
        };
        let getpid = &profile.sample[1];
        assert_eq!(getpid.value, vec![2]);
        assert_eq!(
            name_of(getpid.location_id[0]),
            ("__x64_sys_getpid", "[kernel.kallsyms]")
        );
        assert_eq!(name_of(getpid.location_id[3]), ("perl", ""));
        assert_eq!(name_of(profile.sample[0].location_id[0]), ("burn", ""));

        let off = pprof_profile(&folded, &info(Mode::OffCpu));
        let s = |i: i64| off.string_table[i as usize].as_str();
        assert_eq!(s(off.sample_type[0].r#type), "off_cpu");
        assert_eq!(s(off.sample_type[0].unit), "nanoseconds");
    }
}
