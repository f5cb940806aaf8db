//! Glob matching for the policy language: `*` matches any run of
//! characters, `/` included; every other character matches itself.

/// Whether `text` matches `pattern`.
pub fn matches(pattern: &str, text: &str) -> bool {
    let pattern = pattern.as_bytes();
    let text = text.as_bytes();
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and the text position it currently covers to.
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            backtrack = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((star, covered)) = backtrack {
            p = star + 1;
            t = covered + 1;
            backtrack = Some((star, covered + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == b'*')
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn globs() {
        let cases = [
            ("*", "", true),
            ("*", "prod/db/orders", true),
            ("prod/*", "prod/db/orders", true),
            ("prod/*", "prod", false),
            ("prod/*", "prod/", true),
            ("prod/*/orders", "prod/db/eu/orders", true),
            ("prod/*/orders", "prod/db/orders2", false),
            ("*/orders", "prod/db/orders", true),
            ("a*b*c", "abc", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("secrets:*", "secrets:GetSecretValue", true),
            ("secrets:Get*", "secrets:PutSecretValue", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("spiffe://corp/*", "spiffe://corp/ci/deploy", true),
            ("**", "x", true),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(matches(pattern, text), expected, "{pattern} vs {text}");
        }
    }
}
