//! Roles of members and scopes of API keys.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Roles, weakest first: the order compares them (`Owner > Admin > Member > Viewer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Member,
    Admin,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Viewer => "viewer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "owner" => Ok(Role::Owner),
            "admin" => Ok(Role::Admin),
            "member" => Ok(Role::Member),
            "viewer" => Ok(Role::Viewer),
            _ => Err(()),
        }
    }
}

/// What an API key may be allowed to do. A key never has more power than the current role
/// of the user who made it: each scope needs a minimum role, checked at creation and again
/// on every use (demoting the user narrows the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    DbRead,
    DbWrite,
    DbAdmin,
    Export,
    AuditRead,
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::DbRead,
        Scope::DbWrite,
        Scope::DbAdmin,
        Scope::Export,
        Scope::AuditRead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::DbRead => "db:read",
            Scope::DbWrite => "db:write",
            Scope::DbAdmin => "db:admin",
            Scope::Export => "export",
            Scope::AuditRead => "audit:read",
        }
    }

    /// The weakest role whose keys may carry this scope.
    pub fn min_role(self) -> Role {
        match self {
            Scope::DbRead => Role::Viewer,
            Scope::DbWrite => Role::Member,
            Scope::DbAdmin | Scope::Export | Scope::AuditRead => Role::Admin,
        }
    }
}

impl FromStr for Scope {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        Scope::ALL.into_iter().find(|sc| sc.as_str() == s).ok_or(())
    }
}
