//! `paxlog certs`: a cluster CA plus certificates for every replica and a
//! client, for trying TLS and mutual TLS without an existing PKI.

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};
use std::path::Path;

fn san(name: &str) -> Result<SanType> {
    Ok(match name.parse::<std::net::IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(
            name.to_string()
                .try_into()
                .with_context(|| format!("bad host name {name:?}"))?,
        ),
    })
}

fn write_new(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Writes `ca.pem`, `ca-key.pem`, `node-I.pem`/`node-I-key.pem` for each
/// replica and `client.pem`/`client-key.pem` into `out`. Replica
/// certificates name `peer_name` (checked between replicas), `localhost`,
/// 127.0.0.1 and every extra host.
pub fn generate(out: &Path, nodes: u32, peer_name: &str, hosts: &[String]) -> Result<Vec<String>> {
    if !(1..=64).contains(&nodes) {
        bail!("--nodes must be 1..=64");
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "paxlog cluster CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let mut written = Vec::new();
    let mut emit = |name: &str, pem: String| -> Result<()> {
        write_new(&out.join(name), &pem)?;
        written.push(name.to_string());
        Ok(())
    };
    emit("ca.pem", ca.pem())?;
    emit("ca-key.pem", ca_key.serialize_pem())?;
    let mut names: Vec<String> = vec![
        peer_name.to_string(),
        "localhost".into(),
        "127.0.0.1".into(),
    ];
    names.extend(hosts.iter().cloned());
    for i in 0..nodes {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = names.iter().map(|n| san(n)).collect::<Result<_>>()?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("paxlog replica {i}"));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        emit(&format!("node-{i}.pem"), cert.pem())?;
        emit(&format!("node-{i}-key.pem"), key.serialize_pem())?;
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "paxlog client");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    emit("client.pem", cert.pem())?;
    emit("client-key.pem", key.serialize_pem())?;
    Ok(written)
}
