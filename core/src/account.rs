//! Who a run acts as at MCE: a tenant's user in one business unit. The
//! three travel together as one [`Account`]; each has its own type so that
//! a tenant id is never passed where a user id is meant.

use std::fmt;

use uuid::Uuid;

/// A tenant of the API (the customer whose MCE account the run uses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(pub Uuid);

/// A user of a tenant, whose refresh token the run's MCE calls use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(pub Uuid);

/// A business unit's MID: digits only, trimmed (a row written by someone
/// else may hold anything; see [`Mid::stored`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mid(String);

impl Mid {
    /// A MID from input: `None` unless it is digits.
    pub fn parse(s: &str) -> Option<Mid> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| Mid(s.to_string()))
    }

    /// A MID as a row holds it, unchecked (an empty one means the row
    /// cannot say which business unit it is for).
    pub fn stored(s: String) -> Mid {
        Mid(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Whom a run's MCE calls act as.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Account {
    pub tenant: TenantId,
    /// `None`: the business unit's first stored user.
    pub user: Option<UserId>,
    pub mid: Mid,
}

impl Account {
    pub fn new(tenant: Uuid, user: Option<Uuid>, mid: Mid) -> Self {
        Self {
            tenant: TenantId(tenant),
            user: user.map(UserId),
            mid,
        }
    }

    /// The tenant's id, as messages and rows carry it.
    pub fn tenant_id(&self) -> Uuid {
        self.tenant.0
    }

    /// The user's id, as messages and rows carry it.
    pub fn user_id(&self) -> Option<Uuid> {
        self.user.map(|u| u.0)
    }

    /// Whether a request from `tenant` and `user` may see this account's
    /// runs: the same tenant and the same user (or both without one).
    pub fn owned_by(&self, tenant: Uuid, user: Option<Uuid>) -> bool {
        self.tenant_id() == tenant && self.user_id() == user
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for Mid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mid_is_digits_and_an_account_is_owned_by_its_tenant_and_user() {
        assert_eq!(
            Mid::parse(" 510000123 ").map(|m| m.to_string()),
            Some("510000123".into())
        );
        assert_eq!(Mid::parse("51a"), None);
        assert_eq!(Mid::parse(""), None);
        assert!(Mid::stored(String::new()).is_empty());
        let (tenant, user) = (Uuid::new_v4(), Uuid::new_v4());
        let account = Account::new(tenant, Some(user), Mid::parse("1").unwrap());
        assert!(account.owned_by(tenant, Some(user)));
        assert!(!account.owned_by(tenant, None), "another user of the tenant");
        assert!(!account.owned_by(Uuid::new_v4(), Some(user)), "another tenant");
        assert_eq!(account.tenant.to_string(), tenant.to_string());
    }
}
