//! What the certificate table shows of one certificate: its serial number in hex (as istioctl prints it) and
//! whether it is valid now.
//!
//! Upstream ztunnel writes `serialNumber` in decimal and istioctl prints it in hex; Ambit's ztunnel writes decimal
//! too (older builds wrote hex). Both put the certificate itself in `pem` (base64 of the PEM text), so the serial is read from the
//! certificate when it is there, and the field is only a fallback: all decimal digits are read as decimal
//! (upstream's form), anything else with hex digits as hex.

use base64::Engine as _;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::model::Cert;

/// The serial number in lower-case hex without leading zeros, `None` when neither the certificate nor the field
/// gives one.
pub fn serial_hex(cert: &Cert) -> Option<String> {
    from_pem(&cert.pem).or_else(|| from_field(&cert.serial_number))
}

/// Whether `now` is between the certificate's `validFrom` and `expirationTime` (false when either is missing or
/// unreadable, as istioctl).
pub fn valid_at(cert: &Cert, now: OffsetDateTime) -> bool {
    let parse = |s: &str| OffsetDateTime::parse(s, &Rfc3339).ok();
    match (parse(&cert.valid_from), parse(&cert.expiration_time)) {
        (Some(from), Some(until)) => now > from && now < until,
        _ => false,
    }
}

fn from_pem(pem: &str) -> Option<String> {
    if pem.is_empty() {
        return None;
    }
    let text = if pem.trim_start().starts_with("-----BEGIN") {
        pem.as_bytes().to_vec()
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(pem.trim())
            .ok()?
    };
    let (_, pem) = x509_parser::pem::parse_x509_pem(&text).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(trimmed_hex(cert.raw_serial()))
}

fn trimmed_hex(raw: &[u8]) -> String {
    let start = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    hex::encode(&raw[start..])
}

fn from_field(s: &str) -> Option<String> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return Some(decimal_to_hex(s));
    }
    let digits: String = s
        .strip_prefix("0x")
        .unwrap_or(s)
        .chars()
        .filter(|c| *c != ':')
        .collect();
    if digits.chars().all(|c| c.is_ascii_hexdigit()) {
        let trimmed = digits.trim_start_matches('0');
        return Some(if trimmed.is_empty() {
            "0".to_owned()
        } else {
            trimmed.to_ascii_lowercase()
        });
    }
    Some(s.to_owned())
}

/// A decimal number of any length (`s` is all ASCII digits) in hex.
fn decimal_to_hex(s: &str) -> String {
    // Little-endian base-2^32 limbs.
    let mut limbs: Vec<u32> = vec![0];
    for d in s.bytes() {
        let mut carry = u64::from(d - b'0');
        for limb in limbs.iter_mut() {
            let v = u64::from(*limb) * 10 + carry;
            *limb = (v & 0xffff_ffff) as u32;
            carry = v >> 32;
        }
        if carry > 0 {
            limbs.push(carry as u32);
        }
    }
    while limbs.len() > 1 && limbs.last() == Some(&0) {
        limbs.pop();
    }
    let mut out = String::new();
    for (i, limb) in limbs.iter().rev().enumerate() {
        if i == 0 {
            out.push_str(&format!("{limb:x}"));
        } else {
            out.push_str(&format!("{limb:08x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(serial: &str, from: &str, until: &str) -> Cert {
        Cert {
            pem: String::new(),
            serial_number: serial.into(),
            valid_from: from.into(),
            expiration_time: until.into(),
        }
    }

    #[test]
    fn decimal_serials_in_hex() {
        // istioctl's testdata: serial 305554775863395697262503895661564044819 prints as e5dfb591...
        assert_eq!(
            decimal_to_hex("305554775863395697262503895661564044819"),
            "e5dfb59150b2ba7f108d93dcec5aa613"
        );
        assert_eq!(decimal_to_hex("0"), "0");
        assert_eq!(decimal_to_hex("255"), "ff");
        assert_eq!(decimal_to_hex("4294967296"), "100000000");
        assert_eq!(
            serial_hex(&cert("183856113797057159350158029893417591233", "", "")).as_deref(),
            Some("8a516645c40ce76c2c0d27ab4e2461c1")
        );
    }

    #[test]
    fn hex_serials_stay_hex() {
        assert_eq!(from_field("0A:1B:ff").as_deref(), Some("a1bff"));
        assert_eq!(from_field("00ab").as_deref(), Some("ab"));
        assert_eq!(from_field("5d3c9e").as_deref(), Some("5d3c9e"));
        assert_eq!(from_field("").as_deref(), None);
    }

    #[test]
    fn validity_window() {
        let now = OffsetDateTime::parse("2030-01-01T00:00:00Z", &Rfc3339).unwrap();
        assert!(valid_at(
            &cert("1", "2024-01-01T00:00:00Z", "2099-01-01T00:00:00Z"),
            now
        ));
        assert!(!valid_at(
            &cert("1", "2020-01-01T00:00:00Z", "2021-01-01T00:00:00Z"),
            now
        ));
        assert!(!valid_at(&cert("1", "", ""), now));
        assert!(!valid_at(
            &cert("1", "yesterday", "2099-01-01T00:00:00Z"),
            now
        ));
    }
}
