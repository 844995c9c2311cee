//! Just enough DER to name a certificate's subject and issuer for the log.
//!
//! rustls hands us the peer's certificate as DER bytes it has already
//! verified, but exposes no parser; a full X.509 crate for two log fields is
//! more code to trust than this. The walk is fixed-depth (certificate →
//! TBSCertificate → Name → RDN → attribute), every length is checked against
//! what is left, and the rendered text is bounded, so even a certificate we
//! did not verify (the `verify_client = false` case) cannot cost more than
//! its own size or make us panic.

/// Longest subject or issuer rendered; the rest is cut with "…".
const MAX_RENDERED: usize = 256;

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
/// `[0] EXPLICIT Version` at the start of a v2/v3 TBSCertificate.
const VERSION_TAG: u8 = 0xA0;

/// The subject and issuer of a certificate, as `CN=…, O=…` text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub subject: String,
    pub issuer: String,
}

/// Subject and issuer of a DER certificate; `None` if it is not one.
pub fn names(cert: &[u8]) -> Option<Names> {
    let (tag, certificate, _) = tlv(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, mut tbs, _) = tlv(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    if tbs.first() == Some(&VERSION_TAG) {
        tbs = tlv(tbs)?.2;
    }
    // serialNumber, signature AlgorithmIdentifier
    let tbs = tlv(tbs)?.2;
    let tbs = tlv(tbs)?.2;
    let (tag, issuer, tbs) = tlv(tbs)?;
    if tag != SEQUENCE {
        return None;
    }
    let tbs = tlv(tbs)?.2; // validity
    let (tag, subject, _) = tlv(tbs)?;
    if tag != SEQUENCE {
        return None;
    }
    Some(Names {
        subject: render_name(subject)?,
        issuer: render_name(issuer)?,
    })
}

/// One tag-length-value: the tag, the value, and what follows it. Only
/// single-byte tags (all X.509 uses) and definite lengths up to 4 bytes.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1F == 0x1F {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// A Name (RDNSequence) in certificate order, `CN=…, O=…`.
fn render_name(mut rdns: &[u8]) -> Option<String> {
    let mut out = String::new();
    while !rdns.is_empty() {
        let (tag, mut set, rest) = tlv(rdns)?;
        rdns = rest;
        if tag != SET {
            return None;
        }
        while !set.is_empty() {
            let (tag, attribute, rest) = tlv(set)?;
            set = rest;
            if tag != SEQUENCE {
                return None;
            }
            let (tag, oid, value) = tlv(attribute)?;
            if tag != OID {
                return None;
            }
            let (value_tag, value, _) = tlv(value)?;
            if !out.is_empty() {
                out.push_str(", ");
            }
            out.push_str(&attribute_name(oid));
            out.push('=');
            out.push_str(&string_value(value_tag, value));
            if out.chars().count() > MAX_RENDERED {
                let cut: String = out.chars().take(MAX_RENDERED).collect();
                return Some(cut + "…");
            }
        }
    }
    Some(out)
}

/// The usual short name of an attribute type, or its dotted OID.
fn attribute_name(oid: &[u8]) -> String {
    let short = match oid {
        [0x55, 0x04, 0x03] => "CN",
        [0x55, 0x04, 0x05] => "serialNumber",
        [0x55, 0x04, 0x06] => "C",
        [0x55, 0x04, 0x07] => "L",
        [0x55, 0x04, 0x08] => "ST",
        [0x55, 0x04, 0x0A] => "O",
        [0x55, 0x04, 0x0B] => "OU",
        [0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x09, 0x01] => "emailAddress",
        _ => return dotted(oid).unwrap_or_else(|| "?".into()),
    };
    short.to_owned()
}

fn dotted(oid: &[u8]) -> Option<String> {
    let mut arcs: Vec<u64> = Vec::new();
    let mut acc: u64 = 0;
    for b in oid {
        acc = acc.checked_mul(128)?.checked_add(u64::from(b & 0x7F))?;
        if b & 0x80 == 0 {
            arcs.push(acc);
            acc = 0;
        }
    }
    let first = *arcs.first()?;
    let (a, b) = match first {
        0..=39 => (0, first),
        40..=79 => (1, first - 40),
        _ => (2, first - 80),
    };
    let mut text = format!("{a}.{b}");
    for arc in &arcs[1..] {
        text.push_str(&format!(".{arc}"));
    }
    Some(text)
}

/// A directory string as text; control characters (a log-line forger's
/// tool) become `?`.
fn string_value(tag: u8, value: &[u8]) -> String {
    let text = match tag {
        // UTF8String, PrintableString, IA5String, NumericString, VisibleString
        0x0C | 0x13 | 0x16 | 0x12 | 0x1A => String::from_utf8_lossy(value).into_owned(),
        // TeletexString: Latin-1 in practice.
        0x14 => value.iter().map(|b| char::from(*b)).collect(),
        // BMPString: UTF-16BE.
        0x1E => {
            let units: Vec<u16> = value
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16_lossy(&units)
        }
        _ => format!("#<{} bytes>", value.len()),
    };
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_and_truncations_are_not_certificates() {
        assert_eq!(names(&[]), None);
        assert_eq!(names(&[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]), None);
        assert_eq!(names(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
        assert_eq!(names(&[0x30, 0x02, 0x30, 0x00]), None);
        assert_eq!(names(&[0x1F, 0x00]), None);
    }

    #[test]
    fn a_name_renders_in_certificate_order_without_control_characters() {
        // SET { SEQ { OID 2.5.4.6, PrintableString "DE" } },
        // SET { SEQ { OID 2.5.4.3, UTF8String "a\nb" } },
        // SET { SEQ { OID 1.2.3.4, IA5String "x" } }
        let name = [
            0x31, 0x0B, 0x30, 0x09, 0x06, 0x03, 0x55, 0x04, 0x06, 0x13, 0x02, b'D', b'E', 0x31,
            0x0C, 0x30, 0x0A, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0C, 0x03, b'a', b'\n', b'b', 0x31,
            0x0A, 0x30, 0x08, 0x06, 0x03, 0x2A, 0x03, 0x04, 0x16, 0x01, b'x',
        ];
        assert_eq!(
            render_name(&name).unwrap(),
            "C=DE, CN=a?b, 1.2.3.4=x".to_owned()
        );
        // A length past the end is refused, not read.
        let mut broken = name;
        broken[1] = 0x40;
        assert_eq!(render_name(&broken), None);
    }
}
