//! The site's own small PKI for `chargesite tls init` and `tls issue` (rcgen, ECDSA P-256
//! over ring): a site CA, the gateway's server certificate and client certificates for
//! chargers that cannot make a CSR. Pure: PEM text and the time in, PEM text out; the CLI
//! writes the files (keys 0600).
//!
//! The CA's subject is `CN=chargesite site CA <site id>` (plus `O=<cpo_name>` when set); a
//! charger certificate's is `CN=<charger id>` (plus `O=`, and `serialNumber=` when the
//! charger's serial is known), the binding `ocpp::binding` checks at the handshake.

use chrono::{DateTime, Datelike, Utc};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use sha2::{Digest, Sha256};

use crate::ocpp::binding;

/// Years a CA is valid for.
pub const CA_YEARS: i32 = 20;
/// Years a server or charger certificate is valid for.
pub const LEAF_YEARS: i32 = 5;

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
    /// The certificate, DER (for its fingerprint).
    pub der: Vec<u8>,
}

/// Why a certificate cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused.
    #[error("{0}")]
    Rcgen(#[from] rcgen::Error),
    /// The CA file is not a CA this tool made.
    #[error("the CA certificate cannot be read: {0}")]
    Ca(String),
}

fn validity(params: &mut CertificateParams, now: DateTime<Utc>, years: i32) {
    let start = now - chrono::Duration::days(1);
    // chrono gives a 1-based month and day; the day is capped at 28 so that "now plus N
    // years" exists in every year (29 February).
    let day = |d: DateTime<Utc>, plus: i32| {
        rcgen::date_time_ymd(
            d.year() + plus,
            u8::try_from(d.month()).unwrap_or(1),
            u8::try_from(d.day().min(28)).unwrap_or(1),
        )
    };
    params.not_before = day(start, 0);
    params.not_after = day(now, years);
}

fn ca_name(site_id: &str, cpo_name: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("chargesite site CA {site_id}"));
    if let Some(o) = cpo_name {
        dn.push(DnType::OrganizationName, o);
    }
    dn
}

fn ca_params(dn: DistinguishedName) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

/// A new site CA.
///
/// # Errors
/// [`PkiError`] when rcgen fails.
pub fn new_ca(
    site_id: &str,
    cpo_name: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Issued, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = ca_params(ca_name(site_id, cpo_name));
    validity(&mut params, now, CA_YEARS);
    let cert = params.self_signed(&key)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().to_vec(),
    })
}

/// The CA [`new_ca`] made, as an issuer again: its subject read back from its certificate
/// (so the issued certificates name it byte for byte) and its key from the key file,
/// self-signed once more in memory (rcgen 0.13 signs with an issuer `Certificate`; only
/// its subject and key matter, and both are the CA's).
fn issuer(ca_cert_pem: &str, ca_key_pem: &str) -> Result<(Certificate, KeyPair), PkiError> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(ca_cert_pem.as_bytes())
        .map_err(|e| PkiError::Ca(e.to_string()))?;
    let id = binding::identity_of_cert(&der).map_err(PkiError::Ca)?;
    let Some(cn) = id.cn else {
        return Err(PkiError::Ca("its subject has no CN".into()));
    };
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    if let Some(o) = id.o {
        dn.push(DnType::OrganizationName, o);
    }
    let key = KeyPair::from_pem(ca_key_pem)?;
    let cert = ca_params(dn).self_signed(&key)?;
    Ok((cert, key))
}

/// The gateway's server certificate for `names` (host names and IP addresses).
///
/// # Errors
/// [`PkiError`] when the CA cannot be read or rcgen fails.
pub fn issue_server(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    names: &[String],
    now: DateTime<Utc>,
) -> Result<Issued, PkiError> {
    let issuer = issuer(ca_cert_pem, ca_key_pem)?;
    let mut params = CertificateParams::new(names.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.first().map_or("chargesite", String::as_str),
    );
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, now, LEAF_YEARS);
    sign(params, &issuer)
}

/// A client certificate for charger `cp_id` (`CN=cp_id`, `O=cpo_name`, `serialNumber`).
///
/// # Errors
/// [`PkiError`] when the CA cannot be read or rcgen fails.
pub fn issue_client(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    cn: &str,
    cpo_name: Option<&str>,
    serial: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Issued, PkiError> {
    let issuer = issuer(ca_cert_pem, ca_key_pem)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    if let Some(o) = cpo_name {
        dn.push(DnType::OrganizationName, o);
    }
    if let Some(s) = serial {
        dn.push(DnType::CustomDnType(vec![2, 5, 4, 5]), s);
    }
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, now, LEAF_YEARS);
    sign(params, &issuer)
}

fn sign(params: CertificateParams, issuer: &(Certificate, KeyPair)) -> Result<Issued, PkiError> {
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer.0, &issuer.1)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().to_vec(),
    })
}

/// `AB:CD:…`: the SHA-256 fingerprint a charger's CSMS root certificate setting shows.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Whether `name` is an IP address (an IP SAN) rather than a DNS name.
pub fn is_ip(name: &str) -> bool {
    name.parse::<std::net::IpAddr>().is_ok()
}

/// The SANs rcgen makes of `names`, for the CLI to print.
pub fn describe_sans(names: &[String]) -> String {
    names
        .iter()
        .map(|n| {
            if is_ip(n) {
                format!("IP:{n}")
            } else {
                format!("DNS:{n}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        "2026-12-02T08:00:00Z".parse().unwrap()
    }

    #[test]
    fn a_charger_certificate_carries_the_binding_the_handshake_checks() {
        let ca = new_ca("site-1", Some("ACME"), now()).unwrap();
        let cp = issue_client(
            &ca.cert_pem,
            &ca.key_pem,
            "CP1",
            Some("ACME"),
            Some("SN-9"),
            now(),
        )
        .unwrap();
        let id = binding::identity_of_cert(&cp.der).unwrap();
        assert_eq!(id.cn.as_deref(), Some("CP1"));
        assert_eq!(id.o.as_deref(), Some("ACME"));
        assert_eq!(id.serial.as_deref(), Some("SN-9"));
        assert!(binding::names_charger(&id, "CP1", Some("ACME")).is_ok());
    }

    #[test]
    fn the_issued_certificates_name_the_ca_as_their_issuer_byte_for_byte() {
        use x509_cert::der::{Decode, Encode};
        let ca = new_ca("site-1", None, now()).unwrap();
        let leaf = issue_server(&ca.cert_pem, &ca.key_pem, &["gw.local".into()], now()).unwrap();
        let ca_cert = x509_cert::Certificate::from_der(&ca.der).unwrap();
        let leaf_cert = x509_cert::Certificate::from_der(&leaf.der).unwrap();
        assert_eq!(
            leaf_cert.tbs_certificate().issuer().to_der().unwrap(),
            ca_cert.tbs_certificate().subject().to_der().unwrap()
        );
    }

    #[test]
    fn the_fingerprint_is_colon_separated_uppercase_sha256() {
        let f = fingerprint(b"abc");
        assert_eq!(f.len(), 32 * 3 - 1);
        assert!(f.starts_with("BA:78:16:BF"));
    }

    #[test]
    fn names_that_are_addresses_become_ip_sans() {
        let names = vec!["gw.local".to_string(), "192.168.1.2".to_string()];
        assert_eq!(describe_sans(&names), "DNS:gw.local, IP:192.168.1.2");
    }
}
