//! Personal data detectors: e-mail addresses, phone numbers, payment card numbers
//! (Luhn-checked) and IBANs (ISO 13616 mod-97-checked). Each is a [`Check`] that returns
//! byte spans; none allocates per character, none keeps the matched text.

use std::ops::Range;

use super::Check;

/// `local@domain.tld`: a local part of letters, digits and `._%+-`, a domain of labels
/// joined by dots whose last label is at least two letters.
pub struct Email;

/// A phone number: `+` then 8–15 digits, or 10–15 digits written in groups (spaces,
/// `-`, `.`, parentheses). A bare run of digits is not one (an order number, an id), nor
/// are dates (fewer than 10 digits without `+`).
pub struct Phone;

/// A payment card number: 13–19 digits, optionally grouped by single spaces or dashes,
/// that pass the Luhn check.
pub struct Card;

/// An IBAN: a country code, two check digits and 11–30 letters or digits (printed in
/// groups of four or not), 15–34 characters in all, whose mod-97 remainder is 1.
pub struct Iban;

fn is_local(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn is_domain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-')
}

impl Check for Email {
    fn kind(&self) -> &'static str {
        "email"
    }

    fn scan(&self, text: &str, found: &mut Vec<Range<usize>>) {
        let b = text.as_bytes();
        let mut from = 0;
        while let Some(at) = b[from..].iter().position(|&c| c == b'@').map(|i| i + from) {
            from = at + 1;
            let mut start = at;
            while start > 0 && is_local(b[start - 1]) {
                start -= 1;
            }
            // A local part does not start with a dot.
            while start < at && b[start] == b'.' {
                start += 1;
            }
            let mut end = at + 1;
            while end < b.len() && is_domain(b[end]) {
                end += 1;
            }
            // The sentence's full stop or a dash after the address is not the domain's.
            while end > at + 1 && matches!(b[end - 1], b'.' | b'-') {
                end -= 1;
            }
            if start == at || end == at + 1 {
                continue;
            }
            let domain = &text[at + 1..end];
            let tld = domain.rsplit('.').next().unwrap_or("");
            let labels_ok = domain.split('.').all(|l| !l.is_empty());
            if domain.contains('.')
                && labels_ok
                && tld.len() >= 2
                && tld.bytes().all(|c| c.is_ascii_alphabetic())
            {
                found.push(start..end);
                from = end;
            }
        }
    }
}

/// Whether the byte before `start` and the one at `end` leave the span a whole token
/// (not glued to a letter or digit).
fn standalone(b: &[u8], start: usize, end: usize) -> bool {
    (start == 0 || !b[start - 1].is_ascii_alphanumeric())
        && (end >= b.len() || !b[end].is_ascii_alphanumeric())
}

impl Check for Phone {
    fn kind(&self) -> &'static str {
        "phone"
    }

    fn scan(&self, text: &str, found: &mut Vec<Range<usize>>) {
        let b = text.as_bytes();
        let mut i = 0;
        while i < b.len() {
            let plus = b[i] == b'+';
            let opens = b[i] == b'(';
            if !(plus || opens || b[i].is_ascii_digit()) || (i > 0 && b[i - 1].is_ascii_digit()) {
                i += 1;
                continue;
            }
            // Read digits and single separators; stop at anything else.
            let start = i;
            let mut j = i + usize::from(plus);
            let (mut digits, mut separated, mut last_digit) = (0usize, false, start);
            while j < b.len() {
                match b[j] {
                    c if c.is_ascii_digit() => {
                        digits += 1;
                        last_digit = j;
                    }
                    c @ (b' ' | b'-' | b'.' | b'(' | b')') => {
                        // Two separators in a row end the number (". " after it), but
                        // for ") " and " (" around an area code.
                        let prev = b[j - usize::from(j > start)];
                        let pair = matches!((prev, c), (b')', b' ') | (b' ', b'('));
                        if j > start && !prev.is_ascii_digit() && !pair {
                            break;
                        }
                        separated = true;
                    }
                    _ => break,
                }
                j += 1;
            }
            let end = last_digit + 1;
            let ok = digits > 0
                && standalone(b, start, end)
                && if plus {
                    (8..=15).contains(&digits)
                } else {
                    separated && (10..=15).contains(&digits)
                };
            if ok {
                found.push(start..end);
                i = end;
            } else {
                i = j.max(i + 1);
            }
        }
    }
}

/// The Luhn check of a run of digits (ASCII), as card numbers carry it.
pub fn luhn_valid(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (k, &d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if k % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    !digits.is_empty() && sum % 10 == 0
}

impl Check for Card {
    fn kind(&self) -> &'static str {
        "card"
    }

    fn scan(&self, text: &str, found: &mut Vec<Range<usize>>) {
        let b = text.as_bytes();
        let mut digits = Vec::with_capacity(19);
        let mut i = 0;
        while i < b.len() {
            if !b[i].is_ascii_digit() || (i > 0 && b[i - 1].is_ascii_alphanumeric()) {
                i += 1;
                continue;
            }
            digits.clear();
            let (start, mut j, mut end) = (i, i, i);
            while j < b.len() {
                if b[j].is_ascii_digit() {
                    digits.push(b[j]);
                    end = j + 1;
                    j += 1;
                } else if matches!(b[j], b' ' | b'-')
                    && j + 1 < b.len()
                    && b[j + 1].is_ascii_digit()
                    && b[j - 1].is_ascii_digit()
                {
                    j += 1;
                } else {
                    break;
                }
                if digits.len() > 19 {
                    break;
                }
            }
            if (13..=19).contains(&digits.len()) && standalone(b, start, end) && luhn_valid(&digits)
            {
                found.push(start..end);
                i = end;
            } else {
                i = end.max(i + 1);
            }
        }
    }
}

/// The ISO 13616 check of an IBAN written without spaces (uppercase letters and
/// digits): move the first four characters to the end, letters to 10–35, mod 97 is 1.
pub fn iban_valid(compact: &[u8]) -> bool {
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let mut rem = 0u32;
    for &c in compact[4..].iter().chain(&compact[..4]) {
        rem = match c {
            b'0'..=b'9' => (rem * 10 + u32::from(c - b'0')) % 97,
            b'A'..=b'Z' => (rem * 100 + u32::from(c - b'A') + 10) % 97,
            _ => return false,
        };
    }
    rem == 1
}

impl Check for Iban {
    fn kind(&self) -> &'static str {
        "iban"
    }

    fn scan(&self, text: &str, found: &mut Vec<Range<usize>>) {
        let b = text.as_bytes();
        let mut compact = Vec::with_capacity(34);
        let mut i = 0;
        while i + 4 <= b.len() {
            let starts = b[i].is_ascii_uppercase()
                && b[i + 1].is_ascii_uppercase()
                && b[i + 2].is_ascii_digit()
                && b[i + 3].is_ascii_digit()
                && (i == 0 || !b[i - 1].is_ascii_alphanumeric());
            if !starts {
                i += 1;
                continue;
            }
            compact.clear();
            // The longest valid prefix wins: IBANs printed in groups of four end where a
            // group is followed by something that is not the next group.
            let (mut j, mut best) = (i, None);
            while j < b.len() && compact.len() < 34 {
                let c = b[j];
                if c.is_ascii_uppercase() || c.is_ascii_digit() {
                    compact.push(c);
                    j += 1;
                    if standalone(b, i, j) && iban_valid(&compact) {
                        best = Some(j);
                    }
                } else if c == b' '
                    && compact.len() % 4 == 0
                    && b.get(j + 1).is_some_and(|n| n.is_ascii_alphanumeric())
                {
                    j += 1;
                } else {
                    break;
                }
            }
            match best {
                Some(end) => {
                    found.push(i..end);
                    i = end;
                }
                None => i += 1,
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn spans<'a>(check: &dyn Check, text: &'a str) -> Vec<&'a str> {
        let mut found = Vec::new();
        check.scan(text, &mut found);
        found.into_iter().map(|r| &text[r]).collect()
    }

    #[test]
    fn emails() {
        assert_eq!(
            spans(&Email, "Mail jane.doe+tag@example.co.uk. Or bob@x.io!"),
            vec!["jane.doe+tag@example.co.uk", "bob@x.io"]
        );
        assert!(spans(&Email, "a @ b, user@localhost, x@y.1, @handle").is_empty());
    }

    #[test]
    fn phones() {
        assert_eq!(
            spans(&Phone, "Call +44 20 7946 0958 or (555) 123-4567."),
            vec!["+44 20 7946 0958", "(555) 123-4567"]
        );
        // Dates, short numbers and bare ids are not phone numbers.
        assert!(spans(&Phone, "on 2024-01-15, order 1234567890, room 12-34").is_empty());
    }

    #[test]
    fn luhn() {
        assert!(luhn_valid(b"4111111111111111"));
        assert!(luhn_valid(b"5555555555554444"));
        assert!(luhn_valid(b"378282246310005"));
        assert!(!luhn_valid(b"4111111111111112"));
        assert!(!luhn_valid(b"1234567812345678"));
    }

    #[test]
    fn cards() {
        assert_eq!(
            spans(
                &Card,
                "Visa 4111 1111 1111 1111, MC 5555-5555-5555-4444, Amex 378282246310005."
            ),
            vec![
                "4111 1111 1111 1111",
                "5555-5555-5555-4444",
                "378282246310005"
            ]
        );
        // Fails Luhn, too short, glued to letters.
        assert!(spans(
            &Card,
            "4111 1111 1111 1112 and 4111111 and X4111111111111111"
        )
        .is_empty());
    }

    #[test]
    fn ibans() {
        assert!(iban_valid(b"DE89370400440532013000"));
        assert!(iban_valid(b"GB82WEST12345698765432"));
        assert!(iban_valid(b"FR1420041010050500013M02606"));
        assert!(!iban_valid(b"DE89370400440532013001"));
        assert!(!iban_valid(b"GB82WEST1234569876543"));
        assert_eq!(
            spans(
                &Iban,
                "Pay DE89 3704 0044 0532 0130 00 or GB82WEST12345698765432, thanks."
            ),
            vec!["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432"]
        );
        assert!(spans(&Iban, "DE89 3704 0044 0532 0130 01 and AB12 hello").is_empty());
    }
}
