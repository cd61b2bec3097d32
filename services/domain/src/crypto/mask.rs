//! The one masking rule, used by every response that shows a secret's preview.

/// First 8 and last 4 characters: `uc_1a2b3...9f0e`. Values too short to mask safely are
/// shown as `****`.
pub fn preview(secret: &str) -> String {
    preview_parts(
        secret.get(..8).unwrap_or(""),
        secret.get(secret.len().saturating_sub(4)..).unwrap_or(""),
        secret.len(),
    )
}

/// The preview from stored parts (a key's lookup prefix and last four characters).
pub fn preview_parts(head: &str, tail: &str, len: usize) -> String {
    if len < 16 || head.len() < 8 || tail.len() < 4 {
        return "****".to_owned();
    }
    format!("{}...{}", &head[..8], &tail[tail.len() - 4..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_first_eight_and_last_four() {
        assert_eq!(preview("uc_1a2b3c4d5e6f7a8b9f0e"), "uc_1a2b3...9f0e");
    }

    #[test]
    fn hides_short_values_entirely() {
        assert_eq!(preview("sk-short"), "****");
    }
}
