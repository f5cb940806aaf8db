//! Audit checkpoints as people write them: `SEQ:MAC`, the sequence number
//! of an event and its MAC in hex, as `rekeyd`'s log prints them ("audit
//! checkpoint"). `rekey audit verify --checkpoint` and `rekeyd audit
//! verify-archive --checkpoint` read them.

/// `SEQ:MAC` as the sequence number and the MAC's bytes; the error says
/// what is expected.
pub fn parse(text: &str) -> Result<(i64, Vec<u8>), String> {
    let malformed =
        || format!("--checkpoint {text:?} is not SEQ:MAC (as the server log prints it)");
    let (seq, mac) = text.split_once(':').ok_or_else(malformed)?;
    let seq: i64 = seq
        .parse()
        .ok()
        .filter(|seq| *seq >= 1 && !text.starts_with('+'))
        .ok_or_else(malformed)?;
    // An event's MAC: HMAC-SHA256, 32 bytes.
    if mac.len() != 64 || !mac.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(malformed());
    }
    let mac = (0..mac.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&mac[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| malformed())?;
    Ok((seq, mac))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn checkpoints_parse_as_the_log_prints_them() {
        let mac = "0a".repeat(32);
        assert_eq!(parse(&format!("12:{mac}")), Ok((12, vec![0x0a; 32])));
        let short = format!("12:{}", &mac[..62]);
        let signed = format!("12:+a{}", &mac[2..]);
        let zeroth = format!("0:{mac}");
        let plus = format!("+12:{mac}");
        for bad in [
            "12", "x:0a", "12:zz", "12:", "12:é0", &short, &signed, &zeroth, &plus,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
