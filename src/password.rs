//! Charger passwords: argon2id PHC strings, as `chargesite hash-password` prints them and
//! `[[ocpp.chargers]] password_hash` holds them.

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};

/// Memory cost in KiB. OWASP's argon2id profile for a small machine (7 MiB, 5 passes):
/// a gateway verifies a charger's password on connect and must not spend 19 MiB doing it.
const M_COST_KIB: u32 = 7 * 1024;
const T_COST: u32 = 5;

/// Hashes a password into a PHC string.
///
/// # Errors
/// The argon2 error text (e.g. the system RNG failed).
pub fn hash(password: &str) -> Result<String, String> {
    let params = Params::new(M_COST_KIB, T_COST, 1, None).map_err(|e| e.to_string())?;
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` matches the PHC string `hash` (its own parameters are used).
pub fn verify(password: &str, hash: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), hash)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hashed_password_verifies_and_a_wrong_one_does_not() {
        let h = hash("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify("s3cret", &h));
        assert!(!verify("s3cret ", &h));
        assert!(!verify("s3cret", "not a hash"));
    }
}
