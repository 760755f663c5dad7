//! Who a request comes from: the user a client certificate names (its
//! subject's common name, groups from its organizations, kube's rule) or
//! the user the cluster token stands for.
//!
//! The subject is read with a small DER walk rather than a full X.509
//! parser: rustls has already verified the chain, and only two attribute
//! types of one field are needed.

/// The user the cluster token authenticates as (K3s's `server` entry).
pub const TOKEN_USER: &str = "server";

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    pub fn new(name: &str, groups: &[&str]) -> User {
        User {
            name: name.to_string(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }
}

const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
const OID_ORGANIZATION: &[u8] = &[0x55, 0x04, 0x0a];

/// One DER element: its tag, its contents, and what follows it.
fn element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The elements of a constructed value's contents.
fn children(mut contents: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut out = Vec::new();
    while !contents.is_empty() {
        let (tag, value, rest) = element(contents)?;
        out.push((tag, value));
        contents = rest;
    }
    Some(out)
}

/// The user a certificate (DER) names: CN is the user, each O a group.
pub fn from_certificate(der: &[u8]) -> Option<User> {
    const SEQUENCE: u8 = 0x30;
    let (tag, cert, _) = element(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = element(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let fields = children(tbs)?;
    // [0] version is optional; then serial, signature, issuer, validity, subject.
    let skip = usize::from(fields.first()?.0 == 0xa0);
    let (tag, subject) = *fields.get(skip + 4)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut name = None;
    let mut groups = Vec::new();
    for (_, set) in children(subject)? {
        for (_, attribute) in children(set)? {
            let parts = children(attribute)?;
            let (Some((0x06, oid)), Some((_, value))) = (parts.first(), parts.get(1)) else {
                continue;
            };
            let value = String::from_utf8_lossy(value).into_owned();
            if *oid == OID_COMMON_NAME {
                name = Some(value);
            } else if *oid == OID_ORGANIZATION {
                groups.push(value);
            }
        }
    }
    Some(User {
        name: name?,
        groups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_names_its_user_and_groups() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, "system:admin");
        dn.push(rcgen::DnType::OrganizationName, "system:masters");
        params.distinguished_name = dn;
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            from_certificate(cert.der()),
            Some(User::new("system:admin", &["system:masters"]))
        );
    }

    #[test]
    fn garbage_names_nobody() {
        for der in [
            &b""[..],
            b"\x30",
            b"\x30\x84\xff\xff\xff\xff",
            b"\x30\x03\x30\x01\x00",
        ] {
            assert_eq!(from_certificate(der), None);
        }
    }
}
