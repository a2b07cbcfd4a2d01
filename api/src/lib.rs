//! silo's HTTP API as types: the requests and answers of the tenant API (`/v1/…`) and the
//! admin API (`/admin/v1/…`). The server reads and writes them, the `silo` CLI and the
//! end-to-end tests read them, so a renamed or retyped field fails to compile (or, for an
//! older server, to parse) instead of printing `-`.
//!
//! Fields are added, never renamed or dropped (the contract is `shared/API.md`). Readers
//! ignore fields they do not know, so a newer server still talks to an older CLI. Requests
//! refuse unknown fields, so a typo is a 400 and not a silently ignored setting.

/// `Debug` for an answer that carries a secret (a token, a key, a code): the secret's
/// fields print as `[redacted]`, so a debug print or a panic message cannot leak them.
macro_rules! debug_hiding {
    ($ty:ident { $($shown:ident),* } hiding { $($hidden:ident),* }) => {
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($ty))
                    $(.field(stringify!($shown), &self.$shown))*
                    $(.field(stringify!($hidden), &"[redacted]"))*
                    .finish()
            }
        }
    };
}

mod admin;
mod v1;

pub use admin::*;
pub use v1::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_with_secrets_do_not_debug_print_them() {
        let tokens = Tokens {
            access_token: "eyJ-secret-access".to_owned(),
            refresh_token: "silo_rt_secret".to_owned(),
            expires_in: 900,
        };
        let key = ApiKeyCreated {
            id: "k1".to_owned(),
            key: "silo_abc_secretpart".to_owned(),
            prefix: "abc".to_owned(),
            name: "ci".to_owned(),
            scopes: vec![],
            expires_at: None,
        };
        let printed = format!("{tokens:?} {key:?}");
        for secret in ["eyJ-secret-access", "silo_rt_secret", "secretpart"] {
            assert!(!printed.contains(secret), "{printed}");
        }
        assert!(printed.contains("[redacted]") && printed.contains("expires_in: 900"));
    }
}
