//! Security profiles 2 and 3 (CONTRACT §2–3, §6), pure: what a charger's transport and
//! client certificate must be for its profile, whether a certificate or a CSR names the
//! charger, and whether the serial number its BootNotification reports is the bound one.
//!
//! rustls verifies a client certificate's chain, validity and key usage against
//! `client_ca_file`; it does no name check. Without one, any certificate the site CA
//! signed would open any charger's id (one CSMS shipped exactly that). So the leaf's
//! subject is read here (with `x509-cert`) and bound to the charger: its CN must be the
//! charger id (or `[[ocpp.chargers]] cert_cn`), its O must be `cpo_name` when that is set
//! (OCPP A00.FR.405 / B01.FR.12 ask for both), and a serial number in the subject, or
//! `[[ocpp.chargers]] serial`, must be what the charger reports at boot.

use x509_cert::der::{self, Decode as _};
use x509_cert::name::Name;

/// OID 2.5.4.5, `serialNumber` in a distinguished name.
const SERIAL_NUMBER: der::oid::ObjectIdentifier = der::oid::ObjectIdentifier::new_unwrap("2.5.4.5");

/// The names a certificate or CSR subject carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// Subject CN.
    pub cn: Option<String>,
    /// Subject O.
    pub o: Option<String>,
    /// Subject serialNumber (2.5.4.5), when the CA put one there.
    pub serial: Option<String>,
}

/// The subject of a DER certificate.
///
/// # Errors
/// A text for the log when it does not parse.
pub fn identity_of_cert(der: &[u8]) -> Result<Identity, String> {
    let cert = x509_cert::Certificate::from_der(der).map_err(|e| format!("certificate: {e}"))?;
    identity_of_name(cert.tbs_certificate().subject())
}

/// The subject of a DER PKCS#10 certificate request.
///
/// # Errors
/// A text for the log when it does not parse.
pub fn identity_of_csr(der: &[u8]) -> Result<Identity, String> {
    let req = x509_cert::request::CertReq::from_der(der).map_err(|e| format!("CSR: {e}"))?;
    identity_of_name(&req.info.subject)
}

fn identity_of_name(name: &Name) -> Result<Identity, String> {
    let text = |r: der::Result<Option<x509_cert::ext::pkix::name::DirectoryString>>| {
        r.map(|v| v.map(|d| d.value().into_owned()))
            .map_err(|e| format!("subject: {e}"))
    };
    Ok(Identity {
        cn: text(name.common_name())?,
        o: text(name.organization())?,
        serial: text(name.by_oid(SERIAL_NUMBER))?,
    })
}

/// Why a certificate (or CSR) does not name the charger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// Its subject has no CN.
    NoCn,
    /// Its CN names someone else.
    Cn(String),
    /// Its O is not `cpo_name`.
    Organization(Option<String>),
}

impl Mismatch {
    /// For the log and the `security.event`'s `detail` (names only, never key material).
    pub fn describe(&self, expected_cn: &str) -> String {
        match self {
            Mismatch::NoCn => format!("its subject has no CN; expected CN={expected_cn}"),
            Mismatch::Cn(cn) => format!("CN={cn} does not name this charger (CN={expected_cn})"),
            Mismatch::Organization(o) => format!(
                "O={} is not the operator's cpo_name",
                o.as_deref().unwrap_or("(none)")
            ),
        }
    }
}

/// Whether `id` (a certificate's or CSR's subject) names the charger whose CN must be
/// `expected_cn`, for operator `cpo_name` when set. CN is compared exactly (a charger id
/// is case-sensitive in the path), O exactly.
pub fn names_charger(
    id: &Identity,
    expected_cn: &str,
    cpo_name: Option<&str>,
) -> Result<(), Mismatch> {
    match id.cn.as_deref() {
        None => return Err(Mismatch::NoCn),
        Some(cn) if cn != expected_cn => return Err(Mismatch::Cn(cn.to_string())),
        Some(_) => {}
    }
    match cpo_name {
        Some(o) if id.o.as_deref() != Some(o) => Err(Mismatch::Organization(id.o.clone())),
        _ => Ok(()),
    }
}

/// The certificate type a CSR asks for whose subject names the charger itself (2.0.1
/// `ChargingStationCertificate`; a 1.6 SignCertificate is always that kind). A
/// `V2GCertificate` names the EVSE for ISO 15118 and is passed on unchecked.
pub fn binds_charger(certificate_type: &str) -> bool {
    matches!(
        certificate_type,
        "ChargingStationCertificate" | "ChargePointCertificate"
    )
}

/// Checks a charger's CSR (PEM, as SignCertificate carries it) before it goes upstream:
/// it must parse, and its subject must name the charger as a profile-3 certificate must
/// (CN, and O = `cpo_name` when set), or the certificate the operator signs for it would
/// not let it connect.
///
/// # Errors
/// Why not, for the log, the answer's reason and the `security.event`.
pub fn check_csr(pem: &str, expected_cn: &str, cpo_name: Option<&str>) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("not a PEM certificate request: {e}"))?;
    let id = identity_of_csr(der.as_ref())?;
    names_charger(&id, expected_cn, cpo_name)
        .map_err(|m| format!("CSR {}", m.describe(expected_cn)))
}

/// Checks a signed chain (PEM, leaf first) the operator sends for a charger: every block a
/// certificate, the leaf naming the charger.
///
/// # Errors
/// Why not, for `cmd/result`.
pub fn check_chain(pem: &str, expected_cn: &str, cpo_name: Option<&str>) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    let mut certs = rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes());
    let leaf = match certs.next() {
        Some(Ok(c)) => c,
        Some(Err(e)) => return Err(format!("not a PEM certificate chain: {e}")),
        None => return Err("no PEM certificate in certificate_chain".into()),
    };
    for c in certs {
        let c = c.map_err(|e| format!("not a PEM certificate chain: {e}"))?;
        identity_of_cert(&c)?;
    }
    let id = identity_of_cert(&leaf)?;
    names_charger(&id, expected_cn, cpo_name)
        .map_err(|m| format!("the leaf certificate {}", m.describe(expected_cn)))
}

/// The serial numbers a charger is bound to: `[[ocpp.chargers]] serial` and the
/// certificate subject's serialNumber, either or both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BoundSerial {
    /// From the config.
    pub configured: Option<String>,
    /// From its client certificate.
    pub certificate: Option<String>,
}

impl BoundSerial {
    /// Whether a BootNotification reporting `reported` keeps the binding: every bound
    /// serial must equal it; a charger bound to a serial that reports none breaks it.
    pub fn accepts(&self, reported: Option<&str>) -> bool {
        [&self.configured, &self.certificate]
            .into_iter()
            .flatten()
            .all(|bound| reported == Some(bound.as_str()))
    }

    /// Whether anything is bound at all.
    pub fn is_set(&self) -> bool {
        self.configured.is_some() || self.certificate.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(cn: Option<&str>, o: Option<&str>) -> Identity {
        Identity {
            cn: cn.map(str::to_string),
            o: o.map(str::to_string),
            serial: None,
        }
    }

    #[test]
    fn a_certificate_names_the_charger_when_its_cn_is_the_charger_id() {
        assert_eq!(names_charger(&id(Some("CP1"), None), "CP1", None), Ok(()));
    }

    #[test]
    fn another_chargers_certificate_from_the_same_ca_does_not_name_it() {
        assert_eq!(
            names_charger(&id(Some("CP2"), None), "CP1", None),
            Err(Mismatch::Cn("CP2".into()))
        );
        // Not a prefix match, not case-insensitive.
        assert!(names_charger(&id(Some("CP10"), None), "CP1", None).is_err());
        assert!(names_charger(&id(Some("cp1"), None), "CP1", None).is_err());
    }

    #[test]
    fn a_certificate_without_a_cn_names_nobody() {
        assert_eq!(
            names_charger(&id(None, None), "CP1", None),
            Err(Mismatch::NoCn)
        );
    }

    #[test]
    fn with_a_cpo_name_the_organization_must_be_it() {
        assert_eq!(
            names_charger(&id(Some("CP1"), Some("ACME")), "CP1", Some("ACME")),
            Ok(())
        );
        assert_eq!(
            names_charger(&id(Some("CP1"), Some("Other")), "CP1", Some("ACME")),
            Err(Mismatch::Organization(Some("Other".into())))
        );
        assert_eq!(
            names_charger(&id(Some("CP1"), None), "CP1", Some("ACME")),
            Err(Mismatch::Organization(None))
        );
        // Without one, any O will do.
        assert_eq!(
            names_charger(&id(Some("CP1"), Some("Other")), "CP1", None),
            Ok(())
        );
    }

    #[test]
    fn a_boot_keeps_the_binding_only_with_every_bound_serial() {
        let none = BoundSerial::default();
        assert!(none.accepts(None) && none.accepts(Some("X")) && !none.is_set());
        let cfg = BoundSerial {
            configured: Some("SN1".into()),
            certificate: None,
        };
        assert!(cfg.accepts(Some("SN1")));
        assert!(!cfg.accepts(Some("SN2")));
        assert!(
            !cfg.accepts(None),
            "a bound charger that reports no serial breaks it"
        );
        let both = BoundSerial {
            configured: Some("SN1".into()),
            certificate: Some("SN2".into()),
        };
        assert!(!both.accepts(Some("SN1")) && !both.accepts(Some("SN2")));
    }

    #[test]
    fn garbage_is_not_a_certificate_or_a_csr() {
        assert!(identity_of_cert(b"not der").is_err());
        assert!(identity_of_csr(&[0x30, 0x03, 0x02, 0x01, 0x00]).is_err());
    }
}
