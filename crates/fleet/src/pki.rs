//! The fleet's certificates: its CA, the certificates it issues (the NATS server's, the
//! controller's, zero certificates, hosts' unique certificates, operators'), keys and
//! signing requests made where the key will live, and reading certificates back.
//!
//! Keys are ECDSA P-256. Private keys are written 0600, atomically (temporary file,
//! fsync, rename); a certificate and its key may share one file, so that swapping them
//! on renewal is one rename.
//!
//! A certificate's subject is chosen by the CA, never taken from the signing request:
//! `CN=<name>, OU=<role>, O=<subscriber or fleet>[, serialNumber=<enrolment>]`. The NATS
//! server maps a client certificate to a user by that subject (see [`Subject::nats_user`]),
//! and the signing request carries no extension the CA copies.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use ambulance_report::Timestamp;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
};
use time::OffsetDateTime;

use crate::error::{FleetError, Result};

/// What a certificate is for (its `OU`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The controller's client identity on the engine.
    Controller,
    /// A zero certificate: may only ask to enrol.
    Zero,
    /// A host's unique certificate.
    Host,
    /// An operator of the fleet API (mTLS).
    Operator,
    /// The NATS server.
    Server,
}

impl Role {
    /// The `OU` value.
    pub fn unit(self) -> &'static str {
        match self {
            Role::Controller => "ambulance-controller",
            Role::Zero => "ambulance-zero",
            Role::Host => "ambulance-host",
            Role::Operator => "ambulance-operator",
            Role::Server => "ambulance-nats",
        }
    }

    fn from_unit(unit: &str) -> Option<Role> {
        [
            Role::Controller,
            Role::Zero,
            Role::Host,
            Role::Operator,
            Role::Server,
        ]
        .into_iter()
        .find(|r| r.unit() == unit)
    }
}

/// How far before its issue a certificate is valid from (clocks differ a little).
pub const BACKDATE: Duration = Duration::from_secs(60);

/// A certificate's subject as the CA sets it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    /// `CN`: the host id, `zero`, `controller`, an operator's name, `nats`.
    pub name: String,
    /// `OU`.
    pub role: Role,
    /// `O`: the subscriber (zero and host certificates) or the fleet's name.
    pub org: String,
    /// `serialNumber`: a host's enrolment (a new one each time the host id is enrolled,
    /// so a certificate of an earlier enrolment maps to no user), or a zero
    /// certificate's generation (likewise).
    pub enrolment: Option<String>,
}

impl Subject {
    /// A host's subject.
    pub fn host(host: &str, subscriber: &str, enrolment: &str) -> Subject {
        Subject {
            name: host.into(),
            role: Role::Host,
            org: subscriber.into(),
            enrolment: Some(enrolment.into()),
        }
    }

    /// A zero certificate's subject: `generation` changes each time one is issued for the
    /// subscriber, so issuing a new one retires the previous.
    pub fn zero(subscriber: &str, generation: &str) -> Subject {
        Subject {
            name: "zero".into(),
            role: Role::Zero,
            org: subscriber.into(),
            enrolment: Some(generation.into()),
        }
    }

    /// The controller's subject.
    pub fn controller(fleet: &str) -> Subject {
        Subject {
            name: "controller".into(),
            role: Role::Controller,
            org: fleet.into(),
            enrolment: None,
        }
    }

    /// An operator's subject.
    pub fn operator(name: &str, fleet: &str) -> Subject {
        Subject {
            name: name.into(),
            role: Role::Operator,
            org: fleet.into(),
            enrolment: None,
        }
    }

    fn dn(&self) -> Result<DistinguishedName> {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, self.org.as_str());
        dn.push(DnType::OrganizationalUnitName, self.role.unit());
        dn.push(DnType::CommonName, self.name.as_str());
        if let Some(e) = &self.enrolment {
            let v = e
                .clone()
                .try_into()
                .map_err(|e| FleetError::Pki(format!("enrolment id: {e}")))?;
            dn.push(
                DnType::CustomDnType(vec![2, 5, 4, 5]),
                DnValue::PrintableString(v),
            );
        }
        Ok(dn)
    }

    /// The user name the NATS server maps a certificate with this subject to
    /// (`verify_and_map`): the subject in RFC 2253 form as Go writes it — the attributes
    /// in reverse order of the certificate's.
    pub fn nats_user(&self) -> String {
        let mut s = String::new();
        if let Some(e) = &self.enrolment {
            s += &format!("SERIALNUMBER={e},");
        }
        s += &format!("CN={},OU={},O={}", self.name, self.role.unit(), self.org);
        s
    }
}

/// A certificate the CA issued.
#[derive(Clone, Debug)]
pub struct Issued {
    /// PEM.
    pub pem: String,
    /// Its serial number (hex).
    pub serial: String,
    /// When it expires.
    pub not_after: Timestamp,
}

/// The fleet CA: `ca.pem` and `ca.key` (0600) in a directory.
pub struct Ca {
    key: KeyPair,
    cert_pem: String,
}

fn pki_err(what: &str) -> impl Fn(rcgen::Error) -> FleetError + '_ {
    move |e| FleetError::Pki(format!("{what}: {e}"))
}

fn to_timestamp(t: OffsetDateTime) -> Timestamp {
    Timestamp::from_second(t.unix_timestamp()).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    crate::names::ring_random(&mut b);
    b[0] &= 0x7f; // positive
    b[0] |= 0x01; // and 16 bytes long
    SerialNumber::from_slice(&b)
}

impl Ca {
    /// Loads the CA from `dir`, or creates it there (`fleet` names it).
    pub fn load_or_create(dir: &Path, fleet: &str) -> Result<Ca> {
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca.key");
        if key_path.exists() {
            let key_pem = read(&key_path)?;
            let cert_pem = read(&cert_path)?;
            let key = KeyPair::from_pem(&key_pem).map_err(pki_err("the CA key"))?;
            return Ok(Ca { key, cert_pem });
        }
        let key = KeyPair::generate().map_err(pki_err("cannot generate the CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, fleet);
        dn.push(DnType::CommonName, format!("ambulance fleet CA ({fleet})"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(3650);
        params.serial_number = Some(random_serial());
        let cert = params
            .self_signed(&key)
            .map_err(pki_err("cannot make the CA certificate"))?;
        create_private_dir(dir)?;
        write_private(&key_path, &key.serialize_pem())?;
        write_public(&cert_path, &cert.pem())?;
        tracing::info!(dir = %dir.display(), "fleet CA created");
        Ok(Ca {
            key,
            cert_pem: cert.pem(),
        })
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>> {
        Issuer::from_ca_cert_pem(&self.cert_pem, &self.key).map_err(pki_err("the CA certificate"))
    }

    fn params(
        subject: &Subject,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<CertificateParams> {
        let mut params = CertificateParams::default();
        params.distinguished_name = subject.dn()?;
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![if subject.role == Role::Server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }

    fn finish(cert: rcgen::Certificate, params: &CertificateParams) -> Issued {
        let serial = params
            .serial_number
            .as_ref()
            .map(|s| hex(&s.to_bytes()))
            .unwrap_or_default();
        Issued {
            pem: cert.pem(),
            serial,
            not_after: to_timestamp(params.not_after),
        }
    }

    /// Signs a certificate signing request: checks its signature and that it asks for
    /// `expected_cn`, then issues a client certificate for the key it carries with the
    /// CA's own `subject`, valid from now (less [`BACKDATE`] of clock skew) for
    /// `validity`. Nothing else of the request is used.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        expected_cn: &str,
        subject: &Subject,
        validity: Duration,
    ) -> Result<Issued> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            FleetError::Invalid(format!(
                "the certificate signing request is unusable: {e} (it must be a PEM \
                 CERTIFICATE REQUEST signed by its own key)"
            ))
        })?;
        let asked = csr
            .params
            .distinguished_name
            .get(&DnType::CommonName)
            .map(dn_text)
            .unwrap_or_default();
        if asked != expected_cn {
            return Err(FleetError::Invalid(format!(
                "the certificate signing request is for CN={asked:?}, not {expected_cn:?}"
            )));
        }
        let now = OffsetDateTime::now_utc();
        let params = Ca::params(
            subject,
            now - time::Duration::seconds(BACKDATE.as_secs() as i64),
            now + time::Duration::seconds(validity.as_secs() as i64),
        )?;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer()?)
            .map_err(pki_err("cannot sign the certificate"))?;
        Ok(Ca::finish(cert, &params))
    }

    /// Issues a certificate and a new key for `subject`, valid over `[not_before,
    /// not_after]`; a server certificate carries `names` (DNS names or IP addresses).
    /// Returns the key (PEM) and the certificate.
    pub fn issue_between(
        &self,
        subject: &Subject,
        names: &[String],
        not_before: Timestamp,
        not_after: Timestamp,
    ) -> Result<(String, Issued)> {
        let key = KeyPair::generate().map_err(pki_err("cannot generate a key"))?;
        let at = |t: Timestamp| {
            OffsetDateTime::from_unix_timestamp(t.as_second())
                .map_err(|e| FleetError::Pki(format!("time {t}: {e}")))
        };
        let mut params = Ca::params(subject, at(not_before)?, at(not_after)?)?;
        for n in names {
            params.subject_alt_names.push(match n.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    n.clone()
                        .try_into()
                        .map_err(|e| FleetError::Pki(format!("server name {n:?}: {e}")))?,
                ),
            });
        }
        let cert = params
            .signed_by(&key, &self.issuer()?)
            .map_err(pki_err("cannot sign the certificate"))?;
        Ok((key.serialize_pem(), Ca::finish(cert, &params)))
    }

    /// [`Ca::issue_between`] from [`BACKDATE`] ago for `validity`.
    pub fn issue(
        &self,
        subject: &Subject,
        names: &[String],
        validity: Duration,
    ) -> Result<(String, Issued)> {
        let now = ambulance_report::now();
        let before =
            Timestamp::from_second(now.as_second() - BACKDATE.as_secs() as i64).unwrap_or(now);
        let after = Timestamp::from_second(now.as_second() + validity.as_secs() as i64)
            .map_err(|e| FleetError::Pki(format!("validity {validity:?}: {e}")))?;
        self.issue_between(subject, names, before, after)
    }
}

fn dn_text(v: &DnValue) -> String {
    match v {
        DnValue::Utf8String(s) => s.clone(),
        DnValue::PrintableString(s) => s.as_str().to_string(),
        DnValue::Ia5String(s) => s.as_str().to_string(),
        DnValue::TeletexString(s) => s.as_str().to_string(),
        other => format!("{other:?}"),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A new key pair and a signing request for it naming `cn` (the host id), both PEM.
pub fn key_and_csr(cn: &str) -> Result<(String, String)> {
    let key = KeyPair::generate().map_err(pki_err("cannot generate a key"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(&key)
        .map_err(pki_err("cannot make the signing request"))?;
    let pem = csr
        .pem()
        .map_err(pki_err("cannot encode the signing request"))?;
    Ok((key.serialize_pem(), pem))
}

/// What a certificate says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Its subject as the CA set it, when it is one of the fleet's.
    pub subject: Option<Subject>,
    /// Its serial number (hex).
    pub serial: String,
    /// Valid from.
    pub not_before: Timestamp,
    /// Valid until.
    pub not_after: Timestamp,
}

impl CertInfo {
    /// When a holder should renew it: two thirds of the way from its issue
    /// (`not_before` + [`BACKDATE`]) to its expiry.
    pub fn renew_at(&self) -> Timestamp {
        let issued = self.not_before.as_second() + BACKDATE.as_secs() as i64;
        let end = self.not_after.as_second();
        Timestamp::from_second(issued + (end - issued).max(0) * 2 / 3).unwrap_or(self.not_after)
    }

    /// Whether it has expired.
    pub fn expired(&self) -> bool {
        ambulance_report::now() >= self.not_after
    }
}

/// Reads the first certificate of a PEM text.
pub fn cert_info(pem: &str) -> Result<CertInfo> {
    use x509_parser::oid_registry::{
        OID_X509_COMMON_NAME, OID_X509_ORGANIZATIONAL_UNIT, OID_X509_ORGANIZATION_NAME,
        OID_X509_SERIALNUMBER,
    };
    let bad = |e: String| FleetError::Pki(format!("not a usable certificate: {e}"));
    let start = pem
        .find("-----BEGIN CERTIFICATE-----")
        .ok_or_else(|| bad("no CERTIFICATE block".into()))?;
    let (_, p) = x509_parser::pem::parse_x509_pem(&pem.as_bytes()[start..])
        .map_err(|e| bad(e.to_string()))?;
    let cert = p.parse_x509().map_err(|e| bad(e.to_string()))?;
    let attr = |oid| {
        cert.subject()
            .iter_attributes()
            .find(|a| *a.attr_type() == oid)
            .and_then(|a| a.as_str().ok())
            .map(str::to_string)
    };
    let subject = match (
        attr(OID_X509_COMMON_NAME),
        attr(OID_X509_ORGANIZATIONAL_UNIT).and_then(|u| Role::from_unit(&u)),
        attr(OID_X509_ORGANIZATION_NAME),
    ) {
        (Some(name), Some(role), Some(org)) => Some(Subject {
            name,
            role,
            org,
            enrolment: attr(OID_X509_SERIALNUMBER),
        }),
        _ => None,
    };
    let ts = |t: x509_parser::time::ASN1Time| {
        Timestamp::from_second(t.timestamp()).unwrap_or(Timestamp::UNIX_EPOCH)
    };
    Ok(CertInfo {
        subject,
        serial: hex(cert.raw_serial()),
        not_before: ts(cert.validity().not_before),
        not_after: ts(cert.validity().not_after),
    })
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| FleetError::io("cannot read", path, e))
}

/// Creates `dir` (and its parents) with mode 0700.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| FleetError::io("cannot create directory", dir, e))
}

fn write_mode(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| FleetError::io("cannot create", &tmp, e))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| FleetError::io("cannot write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| FleetError::io("cannot rename into", path, e))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes a file holding a private key: mode 0600 from its creation, atomically.
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    write_mode(path, text, 0o600)
}

/// Writes a public file (certificates, configuration): mode 0644, atomically.
pub fn write_public(path: &Path, text: &str) -> Result<()> {
    write_mode(path, text, 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csr_is_signed_with_the_cas_subject_only() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path(), "test").unwrap();
        let again = Ca::load_or_create(dir.path(), "test").unwrap();
        assert_eq!(ca.cert_pem(), again.cert_pem(), "loaded, not made again");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let (_key, csr) = key_and_csr("host-1").unwrap();
        let subject = Subject::host("host-1", "acme", "e1");
        let issued = ca
            .sign_csr(&csr, "host-1", &subject, Duration::from_secs(3600))
            .unwrap();
        let info = cert_info(&issued.pem).unwrap();
        assert_eq!(info.subject.as_ref(), Some(&subject));
        assert_eq!(info.serial, issued.serial);
        assert!(!info.expired());
        assert_eq!(
            subject.nats_user(),
            "SERIALNUMBER=e1,CN=host-1,OU=ambulance-host,O=acme"
        );

        // Another host's name, a corrupted request: refused.
        let e = ca
            .sign_csr(&csr, "host-2", &subject, Duration::from_secs(60))
            .unwrap_err()
            .to_string();
        assert!(e.contains("CN=\"host-1\""), "{e}");
        let mut bad = csr.clone().into_bytes();
        let mid = bad.len() / 2;
        bad[mid] = if bad[mid] == b'A' { b'B' } else { b'A' };
        let e = ca
            .sign_csr(
                &String::from_utf8(bad).unwrap(),
                "host-1",
                &subject,
                Duration::from_secs(60),
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("signing request is unusable"), "{e}");

        // A certificate issued in the past has expired.
        let (_k, old) = ca
            .issue_between(
                &subject,
                &[],
                "2020-01-01T00:00:00Z".parse().unwrap(),
                "2020-01-02T00:00:00Z".parse().unwrap(),
            )
            .unwrap();
        assert!(cert_info(&old.pem).unwrap().expired());
    }
}
