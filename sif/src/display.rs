//! Text renderings identical to sylabs/sif `siftool` (v2) output.
//!
//! [`render_header`], [`render_list`] and [`render_info`] produce exactly what
//! `siftool header`, `siftool list` and `siftool info` print for the same
//! image (checked byte-for-byte against siftool's golden files), so
//! `sifrun inspect` output can be compared with the reference tools.
//!
//! Deviations, only reachable with unusual images: a signature with an
//! unknown hash code shows `Unknown` (siftool prints nothing for it), and OCI
//! objects show their digest (siftool 2.8 predates OCI objects).

use crate::descriptor::Descriptor;
use crate::header::{Header, GO_ZERO_TIME};
use crate::types::{DataType, Link};

/// `siftool header` output for `h`.
///
/// ```text
/// Version:            01
/// Descriptors Free:   48
/// ...
/// ```
pub fn render_header(h: &Header) -> String {
    let mut s = String::new();
    if !h.launch_script.is_empty() {
        let script = h
            .launch_script
            .strip_suffix('\n')
            .unwrap_or(&h.launch_script);
        s += &format!("Launch Script:\t{script}\n");
    }
    s += &format!("Version:\t{}\n", h.version);
    if h.arch != crate::Arch::Unknown {
        s += &format!("Primary Architecture:\t{}\n", h.arch);
    }
    if !h.id_is_nil() {
        s += &format!("ID:\t{}\n", h.id_string());
    }
    if h.created != GO_ZERO_TIME {
        s += &format!("Created At:\t{}\n", format_time(h.created));
    }
    if h.modified != GO_ZERO_TIME {
        s += &format!("Modified At:\t{}\n", format_time(h.modified));
    }
    s += &format!("Descriptors Free:\t{}\n", h.descriptors_free);
    s += &format!("Descriptors Total:\t{}\n", h.descriptors_total);
    s += &format!("Descriptors Offset:\t{}\n", h.descriptors_offset);
    s += &format!("Descriptors Size:\t{}\n", readable_size(h.descriptors_size));
    s += &format!("Data Offset:\t{}\n", h.data_offset);
    s += &format!("Data Size:\t{}\n", readable_size(h.data_size));
    tabwrite(&s, 1)
}

/// `siftool list` output: a table with one row per descriptor, in the order given.
pub fn render_list(descriptors: &[Descriptor]) -> String {
    let rule = "------------------------------------------------------------------------------\n";
    let mut s = String::from(rule);
    s += &format!(
        "{:<4} {:<8} {:<8} {:<26} {}\n",
        "ID", "|GROUP", "|LINK", "|SIF POSITION (start-end)", "|TYPE"
    );
    s += rule;
    for d in descriptors {
        s += &format!("{:<4} ", d.id);
        match d.group_id {
            None => s += &format!("|{:<7} ", "NONE"),
            Some(g) => s += &format!("|{g:<7} "),
        }
        match d.link {
            Link::None => s += &format!("|{:<7} ", "NONE"),
            Link::Group(g) => s += &format!("|{g:<3} (G) "),
            Link::Object(o) => s += &format!("|{o:<7} "),
        }
        let position = format!("|{}-{} ", d.offset, d.offset.saturating_add(d.size));
        s += &format!("{position:<26} ");
        s += &format!("|{}\n", type_summary(d));
    }
    s
}

/// The TYPE column of `siftool list`, e.g. `FS (Squashfs/*System/amd64)`.
pub fn type_summary(d: &Descriptor) -> String {
    let dt = d.data_type;
    let detail = match dt {
        DataType::Partition => d
            .partition()
            .ok()
            .map(|p| format!("{}/{}/{}", p.fs_type, p.part_type, p.arch)),
        DataType::Signature => d.signature().ok().map(|s| s.hash_type.to_string()),
        DataType::CryptoMessage => d
            .crypto_message()
            .ok()
            .map(|m| format!("{}/{}", m.format, m.message_type)),
        DataType::Sbom => d.sbom_format().ok().map(|f| f.to_string()),
        DataType::OciRootIndex | DataType::OciBlob => d.oci_digest().ok(),
        _ => None,
    };
    match detail {
        Some(detail) => format!("{dt} ({detail})"),
        None => dt.to_string(),
    }
}

/// `siftool info` output for one descriptor.
pub fn render_info(d: &Descriptor) -> String {
    let mut s = String::new();
    s += &format!("\tData Type:\t{}\n", d.data_type);
    s += &format!("\tID:\t{}\n", d.id);
    match d.group_id {
        None => s += "\tGroup ID:\tNONE\n",
        Some(g) => s += &format!("\tGroup ID:\t{g}\n"),
    }
    match d.link {
        Link::None => s += "\tLinked ID:\tNONE\n",
        Link::Group(g) => s += &format!("\tLinked ID:\t{g} (G)\n"),
        Link::Object(o) => s += &format!("\tLinked ID:\t{o}\n"),
    }
    s += &format!("\tOffset:\t{}\n", d.offset);
    s += &format!("\tSize:\t{}\n", d.size);
    if d.created != GO_ZERO_TIME {
        s += &format!("\tCreated At:\t{}\n", format_time(d.created));
    }
    if d.modified != GO_ZERO_TIME {
        s += &format!("\tModified At:\t{}\n", format_time(d.modified));
    }
    if !d.name.is_empty() {
        s += &format!("\tName:\t{}\n", d.name);
    }
    if let Ok(p) = d.partition() {
        s += &format!("\tFilesystem Type:\t{}\n", p.fs_type);
        s += &format!("\tPartition Type:\t{}\n", p.part_type);
        s += &format!("\tArchitecture:\t{}\n", p.arch);
    }
    if let Ok(sig) = d.signature() {
        s += &format!("\tHash Type:\t{}\n", sig.hash_type);
        if let Some(fp) = sig.fingerprint {
            let hex: String = fp.iter().map(|b| format!("{b:02X}")).collect();
            s += &format!("\tEntity:\t{hex}\n");
        }
    }
    if let Ok(m) = d.crypto_message() {
        s += &format!("\tFormat Type:\t{}\n", m.format);
        s += &format!("\tMessage Type:\t{}\n", m.message_type);
    }
    if let Ok(f) = d.sbom_format() {
        s += &format!("\tFormat:\t{f}\n");
    }
    if let Ok(digest) = d.oci_digest() {
        s += &format!("\tDigest:\t{digest}\n");
    }
    tabwrite(&s, 2)
}

/// Size in siftool's human-readable form: `596 B`, `27 KiB`, `2 GiB`
/// (binary units, rounded half away from zero).
pub fn readable_size(size: i64) -> String {
    if -1024 < size && size < 1024 {
        return format!("{size} B");
    }
    let units = ['K', 'M', 'G', 'T', 'P', 'E'];
    let mut div: u64 = 1024;
    let mut exp = 0usize;
    let mut n = size / 1024;
    while n <= -1024 || n >= 1024 {
        div *= 1024;
        exp += 1;
        n /= 1024;
    }
    let value = (size as f64 / div as f64).round();
    format!("{value:.0} {}iB", units[exp.min(units.len() - 1)])
}

/// A Unix time formatted like Go's `time.Time.UTC().String()`:
/// `2020-06-30 00:01:56 +0000 UTC`.
pub fn format_time(unix_seconds: i64) -> String {
    let days = unix_seconds.div_euclid(86_400);
    let secs = unix_seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let year_text = if year < 0 {
        format!("-{:04}", -year)
    } else {
        format!("{year:04}")
    };
    format!(
        "{year_text}-{month:02}-{day:02} {:02}:{:02}:{:02} +0000 UTC",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Proleptic Gregorian date for a day count relative to 1970-01-01
/// (Howard Hinnant's algorithm; i128 keeps extreme inputs from overflowing).
fn civil_from_days(days: i64) -> (i128, u32, u32) {
    let z = i128::from(days) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i128::from(month <= 2);
    (year, month, day)
}

/// Aligns tab-separated cells like Go's `text/tabwriter` with minwidth 0,
/// tabwidth 0, space padding and no flags: each tab-terminated cell is padded
/// to the widest cell of its column block plus `padding`; the text after the
/// last tab of a line is not aligned.
fn tabwrite(text: &str, padding: usize) -> String {
    let lines: Vec<Vec<&str>> = text.split('\n').map(|l| l.split('\t').collect()).collect();
    let mut out = String::new();
    let mut widths = Vec::new();
    format_block(&lines, 0, lines.len(), &mut widths, padding, &mut out);
    out
}

fn cell_width(c: &str) -> usize {
    c.chars().count()
}

fn format_block(
    lines: &[Vec<&str>],
    mut line0: usize,
    line1: usize,
    widths: &mut Vec<usize>,
    padding: usize,
    out: &mut String,
) {
    let column = widths.len();
    let mut this = line0;
    while this < line1 {
        if column + 1 >= lines[this].len() {
            this += 1;
            continue;
        }
        // A cell in this column starts a block: flush the lines before it.
        write_lines(lines, line0, this, widths, out);
        line0 = this;
        let mut width = 0;
        while this < line1 && column + 1 < lines[this].len() {
            width = width.max(cell_width(lines[this][column]) + padding);
            this += 1;
        }
        widths.push(width);
        format_block(lines, line0, this, widths, padding, out);
        widths.pop();
        line0 = this;
    }
    write_lines(lines, line0, line1, widths, out);
}

fn write_lines(lines: &[Vec<&str>], from: usize, to: usize, widths: &[usize], out: &mut String) {
    for (i, line) in lines.iter().enumerate().take(to).skip(from) {
        for (j, cell) in line.iter().enumerate() {
            out.push_str(cell);
            if j + 1 < line.len() {
                if let Some(&w) = widths.get(j) {
                    out.push_str(&" ".repeat(w.saturating_sub(cell_width(cell))));
                }
            }
        }
        // The final segment after the last newline has no newline of its own.
        if i + 1 < lines.len() {
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readable_sizes_match_siftool() {
        assert_eq!(readable_size(1), "1 B");
        assert_eq!(readable_size(1023), "1023 B");
        assert_eq!(readable_size(1024), "1 KiB");
        assert_eq!(readable_size(2047), "2 KiB");
        assert_eq!(readable_size(28080), "27 KiB");
        assert_eq!(readable_size(1 << 20), "1 MiB");
        assert_eq!(readable_size(1 << 60), "1 EiB");
        assert_eq!(readable_size(i64::MAX), "8 EiB");
        assert_eq!(readable_size(-2048), "-2 KiB");
    }

    #[test]
    fn times_match_go() {
        assert_eq!(format_time(1_593_475_316), "2020-06-30 00:01:56 +0000 UTC");
        assert_eq!(format_time(0), "1970-01-01 00:00:00 +0000 UTC");
        assert_eq!(format_time(GO_ZERO_TIME), "0001-01-01 00:00:00 +0000 UTC");
        assert_eq!(format_time(-1), "1969-12-31 23:59:59 +0000 UTC");
        // Must not panic at the extremes.
        let _ = format_time(i64::MIN);
        let _ = format_time(i64::MAX);
    }

    #[test]
    fn tabwriter_aligns_columns() {
        assert_eq!(tabwrite("a:\t1\nlong:\t2\n", 1), "a:    1\nlong: 2\n");
        assert_eq!(tabwrite("\tx:\t1\n\tyy:\t2\n", 2), "  x:   1\n  yy:  2\n");
        // A line without tabs ends the column block.
        assert_eq!(
            tabwrite("a:\t1\nplain\nlong:\t2\n", 1),
            "a: 1\nplain\nlong: 2\n"
        );
    }
}
