//! Listing order and opaque page tokens.
//!
//! Listed items live in sorted sets whose members are `{create_ms:016}:{id}` (all scores 0), so
//! Redis's lexicographic order is exactly the contract's order: create time, then id. A page
//! token names the last member returned plus the filter it was issued for, so a token is
//! refused when replayed with other filters; the next page starts strictly after that member,
//! which keeps paging stable while items are added or removed.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::validate::{MAX_PAGE_TOKEN_CHARS, is_id};

const VERSION: &str = "v1";

/// The sorted-set member of an item created at `create_ms` with `id`.
pub fn member(create_ms: i64, id: &str) -> String {
    format!("{:016}:{id}", create_ms.max(0))
}

/// The id in a member, if the member is well-formed.
pub fn member_id(member: &str) -> Option<&str> {
    let (time, id) = member.split_once(':')?;
    (time.len() == 16 && time.bytes().all(|b| b.is_ascii_digit()) && is_id(id)).then_some(id)
}

/// What a token was issued for: the listing and its filter values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listing<'a> {
    /// `visibility` is the effective filter (`draft`, `published`; empty = none).
    Products {
        seller_id: &'a str,
        tag: &'a str,
        visibility: &'a str,
    },
    Images {
        product_id: &'a str,
    },
    /// `ListImages`: images in a state updated before a time (ms; `-1` = no bound).
    ImagesByState {
        state: &'a str,
        before_ms: i64,
    },
}

impl Listing<'_> {
    /// Filter values are ids or tags, which never contain `|` or `,`.
    fn scope(&self) -> String {
        match self {
            // Without a visibility filter the scope is what it was before visibility existed,
            // so tokens handed out then keep working.
            Listing::Products {
                seller_id,
                tag,
                visibility: "",
            } => format!("p,{seller_id},{tag}"),
            Listing::Products {
                seller_id,
                tag,
                visibility,
            } => format!("p,{seller_id},{tag},{visibility}"),
            Listing::Images { product_id } => format!("i,{product_id}"),
            Listing::ImagesByState { state, before_ms } => format!("s,{state},{before_ms}"),
        }
    }
}

/// A token continuing `listing` after `last_member`.
pub fn encode(listing: &Listing<'_>, last_member: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{VERSION}|{}|{last_member}", listing.scope()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("is too long")]
    TooLong,
    #[error("is not a token returned by this listing")]
    Malformed,
    #[error("was issued for different filter parameters")]
    Mismatched,
}

/// The member to continue after; `None` for an empty token (first page).
pub fn decode(listing: &Listing<'_>, token: &str) -> Result<Option<String>, TokenError> {
    if token.is_empty() {
        return Ok(None);
    }
    if token.len() > MAX_PAGE_TOKEN_CHARS {
        return Err(TokenError::TooLong);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| TokenError::Malformed)?;
    let text = String::from_utf8(bytes).map_err(|_| TokenError::Malformed)?;
    let mut parts = text.split('|');
    let (Some(VERSION), Some(scope), Some(last), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    if member_id(last).is_none() {
        return Err(TokenError::Malformed);
    }
    if scope != listing.scope() {
        return Err(TokenError::Mismatched);
    }
    Ok(Some(last.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_sort_by_time_then_id() {
        let mut members = [
            member(20, "b"),
            member(3, "z"),
            member(20, "a"),
            member(1_700_000_000_000, "a"),
        ];
        members.sort();
        let ids: Vec<_> = members.iter().filter_map(|m| member_id(m)).collect();
        assert_eq!(ids, ["z", "a", "b", "a"]);
        assert_eq!(member_id("123:abc"), None);
        assert_eq!(member_id("000000000000000x:abc"), None);
    }

    #[test]
    fn tokens_round_trip_and_are_bound_to_their_filter() {
        let listing = Listing::Products {
            seller_id: "seller1",
            tag: "red",
            visibility: "",
        };
        let last = member(42, "01ABC");
        let token = encode(&listing, &last);
        assert_eq!(decode(&listing, &token), Ok(Some(last)));
        assert_eq!(decode(&listing, ""), Ok(None));
        let other = Listing::Products {
            seller_id: "seller1",
            tag: "",
            visibility: "",
        };
        assert_eq!(decode(&other, &token), Err(TokenError::Mismatched));
        let published = Listing::Products {
            seller_id: "seller1",
            tag: "red",
            visibility: "published",
        };
        assert_eq!(decode(&published, &token), Err(TokenError::Mismatched));
        let published_token = encode(&published, &member(42, "01ABC"));
        assert_eq!(
            decode(&listing, &published_token),
            Err(TokenError::Mismatched)
        );
        let images = Listing::Images { product_id: "p" };
        assert_eq!(decode(&images, &token), Err(TokenError::Mismatched));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let listing = Listing::Images { product_id: "p" };
        for bad in [
            "garbage!",
            "djE",
            &URL_SAFE_NO_PAD.encode("v1|i,p|notamember"),
            &URL_SAFE_NO_PAD.encode("v2|i,p|0000000000000042:x"),
            &URL_SAFE_NO_PAD.encode("v1|i,p|0000000000000042:x|extra"),
        ] {
            assert_eq!(decode(&listing, bad), Err(TokenError::Malformed), "{bad}");
        }
        assert_eq!(
            decode(&listing, &"a".repeat(2000)),
            Err(TokenError::TooLong)
        );
    }
}
