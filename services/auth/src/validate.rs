//! Pure input rules for accounts (no I/O), shared by the handlers and configuration checks.

pub const MAX_EMAIL_CHARS: usize = 254;
pub const MIN_PASSWORD_CHARS: usize = 10;
pub const MAX_PASSWORD_CHARS: usize = 128;
pub const MAX_DISPLAY_NAME_CHARS: usize = 100;
pub const MAX_REFRESH_TOKEN_CHARS: usize = 512;
pub const MAX_CLIENT_SECRET_CHARS: usize = 256;

/// Trimmed and lowercased, the form emails are stored and compared in.
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// Why a normalised email is not acceptable, if it is not.
pub fn email_problem(email: &str) -> Option<&'static str> {
    if email.is_empty() {
        return Some("must not be empty");
    }
    if email.chars().count() > MAX_EMAIL_CHARS {
        return Some("must be at most 254 characters");
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("must not contain spaces or control characters");
    }
    let Some((local, domain)) = email.rsplit_once('@') else {
        return Some("must look like local@domain");
    };
    if local.is_empty() || domain.is_empty() || local.contains('@') {
        return Some("must look like local@domain");
    }
    if !domain.contains('.') || domain.starts_with('.') || domain.ends_with('.') {
        return Some("domain must contain a dot, e.g. example.com");
    }
    None
}

/// Why a password does not meet the policy, if it does not. Lengths count Unicode scalar values.
pub fn password_problem(password: &str) -> Result<(), &'static str> {
    let count = password.chars().count();
    if count < MIN_PASSWORD_CHARS {
        return Err("must be at least 10 characters");
    }
    if count > MAX_PASSWORD_CHARS {
        return Err("must be at most 128 characters");
    }
    let mut chars = password.chars();
    if let Some(first) = chars.next()
        && chars.all(|c| c == first)
    {
        return Err("must not be one repeated character");
    }
    Ok(())
}

/// The trimmed display name, or why it is not acceptable.
pub fn display_name(name: &str) -> Result<String, &'static str> {
    let trimmed = name.trim();
    if trimmed.is_empty() {
        return Err("must not be empty");
    }
    if trimmed.chars().count() > MAX_DISPLAY_NAME_CHARS {
        return Err("must be at most 100 characters");
    }
    if trimmed.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    Ok(trimmed.to_owned())
}

pub fn client_id_problem(client_id: &str) -> Option<&'static str> {
    let valid = !client_id.is_empty()
        && client_id.len() <= 64
        && client_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    (!valid).then_some("must be 1 to 64 characters of [A-Za-z0-9_.-]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(normalize_email("  Alice@Example.COM "), "alice@example.com");
        assert_eq!(email_problem("alice@example.com"), None);
        for bad in [
            "",
            "alice",
            "@example.com",
            "alice@",
            "alice@localhost",
            "al ice@example.com",
            "a@b@example.com",
            "alice@example.",
        ] {
            assert!(email_problem(bad).is_some(), "{bad:?}");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(email_problem(&long).is_some());
    }

    #[test]
    fn password_policy() {
        assert!(password_problem("correct horse battery").is_ok());
        assert!(password_problem("short").is_err());
        assert!(password_problem("aaaaaaaaaaaa").is_err());
        assert!(password_problem(&"x1".repeat(65)).is_err());
        // Ten Unicode characters, more than ten bytes: counted as characters.
        assert!(password_problem("ééééééééé1").is_ok());
    }

    #[test]
    fn display_names() {
        assert_eq!(display_name("  Alice  ").unwrap(), "Alice");
        assert!(display_name("   ").is_err());
        assert!(display_name("bad\u{7}name").is_err());
        assert!(display_name(&"n".repeat(101)).is_err());
    }

    #[test]
    fn client_ids() {
        assert_eq!(client_id_problem("thumbnail-fn"), None);
        assert!(client_id_problem("").is_some());
        assert!(client_id_problem("has space").is_some());
        assert!(client_id_problem(&"x".repeat(65)).is_some());
    }
}
