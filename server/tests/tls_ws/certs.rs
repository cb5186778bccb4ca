//! Test certificates, made with the `openssl` command at test time in a
//! temporary directory (no private key is committed): two unrelated server
//! CAs (A and B), a server certificate from each for `localhost` and
//! 127.0.0.1 (A with an EC key, B with RSA), A also as a password-protected
//! PKCS#12 file, a client CA with a client certificate (CN `device-42`),
//! and a client certificate from CA B that the client CA does not trust.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::common::{TempFile, require_program, run_with_timeout};

/// The password of the PKCS#12 files.
pub const PFX_PASSWORD: &str = "pfx-test-password";
/// The CN of the trusted client certificate.
pub const CLIENT_CN: &str = "device-42";

const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

/// A certificate and its PEM private key.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Everything the tests use; paths in one temporary directory.
pub struct Certs {
    pub dir: PathBuf,
    pub ca_a: PathBuf,
    pub ca_b: PathBuf,
    pub server_a: Pair,
    pub server_b: Pair,
    /// `server_a` with its key and CA A, in PKCS#12 with [`PFX_PASSWORD`].
    pub server_a_pfx: PathBuf,
    /// `server_b` likewise.
    pub server_b_pfx: PathBuf,
    pub client_ca: PathBuf,
    /// CN [`CLIENT_CN`], signed by the client CA.
    pub client: Pair,
    /// CN `intruder`, signed by CA B (not the client CA).
    pub rogue_client: Pair,
    _dir: TempFile,
}

impl Certs {
    /// The certificates, made once per test process.
    pub fn get() -> &'static Certs {
        static CERTS: OnceLock<Certs> = OnceLock::new();
        CERTS.get_or_init(Certs::generate)
    }

    fn generate() -> Certs {
        let holder = TempFile::new("openssl.cnf", OPENSSL_CNF.as_bytes());
        let dir = holder.path().parent().unwrap().to_path_buf();
        let cnf = holder.path().to_path_buf();
        let openssl = Openssl {
            program: require_program("openssl", "openssl"),
            dir: dir.clone(),
            cnf,
            serial: 1000,
        };
        let mut openssl = openssl;
        let ca_a = openssl.ca("ca-a", "Easy MQTT Test CA A");
        let ca_b = openssl.ca("ca-b", "Easy MQTT Test CA B");
        let client_ca = openssl.ca("client-ca", "Easy MQTT Test Client CA");
        let server_a = openssl.leaf("server-a", "localhost", &ca_a, "server", KeyType::Ec);
        let server_b = openssl.leaf("server-b", "localhost", &ca_b, "server", KeyType::Rsa);
        let client = openssl.leaf("client", CLIENT_CN, &client_ca, "client", KeyType::Ec);
        let rogue_client = openssl.leaf("rogue", "intruder", &ca_b, "client", KeyType::Ec);
        let server_a_pfx = openssl.pfx("server-a", &server_a, &ca_a.cert);
        let server_b_pfx = openssl.pfx("server-b", &server_b, &ca_b.cert);
        Certs {
            dir,
            ca_a: ca_a.cert,
            ca_b: ca_b.cert,
            server_a,
            server_b,
            server_a_pfx,
            server_b_pfx,
            client_ca: client_ca.cert,
            client,
            rogue_client,
            _dir: holder,
        }
    }
}

#[derive(Clone, Copy)]
enum KeyType {
    Ec,
    Rsa,
}

struct Openssl {
    program: PathBuf,
    dir: PathBuf,
    cnf: PathBuf,
    serial: u32,
}

impl Openssl {
    fn run(&self, args: &[&str]) {
        let mut command = Command::new(&self.program);
        command.current_dir(&self.dir).args(args);
        let output = run_with_timeout(command, crate::common::WAIT);
        assert!(
            output.status.success(),
            "openssl {args:?} failed: {}",
            output.stderr
        );
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn new_key(&self, key: &Path, kind: KeyType) -> Vec<String> {
        let key = key.to_str().unwrap().to_owned();
        let mut args: Vec<String> = match kind {
            KeyType::Ec => vec![
                "-newkey".into(),
                "ec".into(),
                "-pkeyopt".into(),
                "ec_paramgen_curve:prime256v1".into(),
            ],
            KeyType::Rsa => vec!["-newkey".into(), "rsa:2048".into()],
        };
        args.extend(["-nodes".into(), "-keyout".into(), key]);
        args
    }

    /// A self-signed CA with an EC key.
    fn ca(&mut self, name: &str, cn: &str) -> Pair {
        let pair = Pair {
            cert: self.path(&format!("{name}.pem")),
            key: self.path(&format!("{name}.key")),
        };
        let mut args: Vec<String> = vec!["req".into(), "-x509".into(), "-new".into()];
        args.extend(self.new_key(&pair.key, KeyType::Ec));
        args.extend(
            [
                "-out",
                pair.cert.to_str().unwrap(),
                "-days",
                "3",
                "-subj",
                &format!("/CN={cn}"),
                "-config",
                self.cnf.to_str().unwrap(),
                "-extensions",
                "ca",
            ]
            .map(String::from),
        );
        self.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
        pair
    }

    /// A certificate for `cn` signed by `ca`, with the extensions of
    /// section `profile` (`server` or `client`).
    fn leaf(&mut self, name: &str, cn: &str, ca: &Pair, profile: &str, kind: KeyType) -> Pair {
        let pair = Pair {
            cert: self.path(&format!("{name}.pem")),
            key: self.path(&format!("{name}.key")),
        };
        let csr = self.path(&format!("{name}.csr"));
        let mut args: Vec<String> = vec!["req".into(), "-new".into()];
        args.extend(self.new_key(&pair.key, kind));
        args.extend(
            [
                "-out",
                csr.to_str().unwrap(),
                "-subj",
                &format!("/CN={cn}"),
                "-config",
                self.cnf.to_str().unwrap(),
            ]
            .map(String::from),
        );
        self.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
        self.serial += 1;
        self.run(&[
            "x509",
            "-req",
            "-in",
            csr.to_str().unwrap(),
            "-CA",
            ca.cert.to_str().unwrap(),
            "-CAkey",
            ca.key.to_str().unwrap(),
            "-set_serial",
            &self.serial.to_string(),
            "-days",
            "2",
            "-out",
            pair.cert.to_str().unwrap(),
            "-extfile",
            self.cnf.to_str().unwrap(),
            "-extensions",
            profile,
        ]);
        pair
    }

    /// `pair` with `ca` in a PKCS#12 file (OpenSSL 3's default algorithms).
    fn pfx(&mut self, name: &str, pair: &Pair, ca: &Path) -> PathBuf {
        let out = self.path(&format!("{name}.pfx"));
        self.run(&[
            "pkcs12",
            "-export",
            "-inkey",
            pair.key.to_str().unwrap(),
            "-in",
            pair.cert.to_str().unwrap(),
            "-certfile",
            ca.to_str().unwrap(),
            "-name",
            name,
            "-passout",
            &format!("pass:{PFX_PASSWORD}"),
            "-out",
            out.to_str().unwrap(),
        ]);
        out
    }
}

/// Replaces `to` with a copy of `from` atomically (write aside, rename),
/// as a deployment tool would.
pub fn replace_file(from: &Path, to: &Path) {
    let aside = to.with_extension("new");
    std::fs::copy(from, &aside).unwrap();
    std::fs::rename(&aside, to).unwrap();
}

/// A fresh directory with copies of `files` (name, source), for a test that
/// changes them.
pub fn copies(files: &[(&str, &Path)]) -> (TempFile, Vec<PathBuf>) {
    let holder = TempFile::new("README", b"certificate copies of one test\n");
    let dir = holder.path().parent().unwrap().to_path_buf();
    let paths = files
        .iter()
        .map(|(name, source)| {
            let path = dir.join(name);
            std::fs::copy(source, &path).unwrap();
            path
        })
        .collect();
    (holder, paths)
}
