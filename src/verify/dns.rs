//! The resolver seam of verification: which DNS servers mail-auth asks, and the record cache it
//! consults first.
//!
//! Production uses the system resolver, or `auth.nameservers` when set (a local DNS server in
//! the end-to-end tests). Unit tests pre-load the cache with parsed records and mark it
//! authoritative, so a name they did not load is NXDOMAIN instead of a query leaving the machine.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::resolver::ToFqdn;
use mail_auth::common::verify::DomainKey;
use mail_auth::dmarc::Dmarc;
use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::hickory_resolver::proto::op::ResponseCode;
use mail_auth::hickory_resolver::system_conf::read_system_conf;
use mail_auth::spf::Spf;
use mail_auth::{DnsError, MX, MessageAuthenticator, Parameters, RecordSet, ResolverCache, Txt};

use super::Error;

/// Entries kept before the cache starts over; bounds memory whatever senders make us look up.
const MAX_ENTRIES: usize = 10_000;

/// The shortest time a "no such record" answer is kept. mail-auth caches records, not their
/// absence, and DMARC's tree walk asks for names that rarely exist (`_dmarc.com`,
/// `_dmarc.co.uk`, …) for every message. A resolver's NXDOMAIN normally carries its zone's SOA,
/// whose minimum TTL hickory honours; an answer without one (a local DNS server, a forwarder
/// that strips it) would otherwise be asked again for the next message, on the path to `250`.
const NEGATIVE_MIN_TTL: Duration = Duration::from_secs(60);

/// Builds the authenticator over the configured nameservers (`"ip:port"` or `"ip"`), or the
/// system resolver when the list is empty.
///
/// # Errors
/// [`Error::Resolver`] when an address does not parse or the system configuration is unreadable.
pub fn authenticator(
    nameservers: &[String],
    timeout: Duration,
) -> Result<MessageAuthenticator, Error> {
    if nameservers.is_empty() {
        let (config, mut options) = read_system_conf()
            .map_err(|err| Error::Resolver(format!("reading the system resolver config: {err}")))?;
        options.timeout = timeout;
        options.attempts = 2;
        options.negative_min_ttl = Some(NEGATIVE_MIN_TTL);
        return MessageAuthenticator::new(config, options)
            .map_err(|err| Error::Resolver(err.to_string()));
    }
    let mut options = ResolverOpts::default();
    options.timeout = timeout;
    options.attempts = 2;
    options.negative_min_ttl = Some(NEGATIVE_MIN_TTL);
    let mut servers = Vec::with_capacity(nameservers.len());
    for server in nameservers {
        let addr = server
            .parse::<SocketAddr>()
            .or_else(|_| server.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
            .map_err(|_| Error::Resolver(format!("nameserver `{server}` is not ip or ip:port")))?;
        let mut config = NameServerConfig::udp_and_tcp(addr.ip());
        for connection in &mut config.connections {
            connection.port = addr.port();
        }
        servers.push(config);
    }
    MessageAuthenticator::new(ResolverConfig::from_name_servers(servers), options)
        .map_err(|err| Error::Resolver(err.to_string()))
}

/// An authenticator with no nameserver, for a verifier that is switched off.
///
/// # Errors
/// [`Error::Resolver`] when the resolver cannot be built.
pub fn unused_authenticator() -> Result<MessageAuthenticator, Error> {
    MessageAuthenticator::new(
        ResolverConfig::from_name_servers(Vec::new()),
        ResolverOpts::default(),
    )
    .map_err(|err| Error::Resolver(err.to_string()))
}

/// The caches mail-auth reads before asking DNS, one per record type.
#[derive(Default)]
pub struct DnsCache {
    pub(super) txt: Cache<Box<str>, Txt>,
    pub(super) mx: Cache<Box<str>, RecordSet<MX>>,
    pub(super) ipv4: Cache<Box<str>, RecordSet<Ipv4Addr>>,
    pub(super) ipv6: Cache<Box<str>, RecordSet<Ipv6Addr>>,
    pub(super) ptr: Cache<IpAddr, RecordSet<Box<str>>>,
}

/// Verification parameters that read through this cache.
pub type Cached<'x, P> = Parameters<
    'x,
    P,
    Cache<Box<str>, Txt>,
    Cache<Box<str>, RecordSet<MX>>,
    Cache<Box<str>, RecordSet<Ipv4Addr>>,
    Cache<Box<str>, RecordSet<Ipv6Addr>>,
    Cache<IpAddr, RecordSet<Box<str>>>,
>;

impl DnsCache {
    /// Wraps verification parameters so mail-auth consults this cache before DNS.
    pub fn params<P>(&self, inner: P) -> Cached<'_, P> {
        Parameters::new(inner)
            .with_txt_cache(&self.txt)
            .with_mx_cache(&self.mx)
            .with_ipv4_cache(&self.ipv4)
            .with_ipv6_cache(&self.ipv6)
            .with_ptr_cache(&self.ptr)
    }

    /// A cache that answers only from what [`DnsCache::preload_txt`] put in it: every other TXT
    /// name is NXDOMAIN. For tests.
    pub fn authoritative() -> Self {
        let mut cache = Self::default();
        cache.txt.authoritative = true;
        cache.mx.authoritative = true;
        cache.ipv4.authoritative = true;
        cache.ipv6.authoritative = true;
        cache
    }

    /// Loads a TXT record as DNS would serve it at `name`, parsed by the kind its name implies
    /// (`_dmarc.` → DMARC, `._domainkey.` → DKIM key, otherwise SPF).
    ///
    /// # Errors
    /// [`Error::Record`] when the text is not a valid record of that kind.
    pub fn preload_txt(&self, name: &str, text: &str) -> Result<(), Error> {
        let bad = |err: mail_auth::Error| Error::Record(format!("{name}: {err}"));
        let value: Txt = if name.starts_with("_dmarc.") {
            Dmarc::parse(text.as_bytes()).map_err(bad)?.into()
        } else if name.contains("._domainkey.") {
            DomainKey::parse(text.as_bytes()).map_err(bad)?.into()
        } else {
            Spf::parse(text.as_bytes()).map_err(bad)?.into()
        };
        let forever = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        self.txt
            .insert(name.to_fqdn().into_owned().into(), value, forever);
        Ok(())
    }
}

pub struct Cache<K, V> {
    entries: Mutex<HashMap<K, (V, Instant)>>,
    authoritative: bool,
}

impl<K, V> Default for Cache<K, V> {
    fn default() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            authoritative: false,
        }
    }
}

impl<K: Hash + Eq, V: Clone> Cache<K, V> {
    fn lookup<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        entries
            .get(key)
            .filter(|(_, valid_until)| *valid_until > Instant::now())
            .map(|(value, _)| value.clone())
    }
}

impl<V: Clone> ResolverCache<Box<str>, V> for Cache<Box<str>, V>
where
    V: MissingRecord,
{
    fn get<Q>(&self, name: &Q) -> Option<V>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.lookup(name)
            .or_else(|| self.authoritative.then(V::missing).flatten())
    }

    fn remove<Q>(&self, name: &Q) -> Option<V>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name)
            .map(|(value, _)| value)
    }

    fn insert(&self, key: Box<str>, value: V, valid_until: Instant) {
        insert_bounded(&self.entries, key, value, valid_until);
    }
}

impl<V: Clone> ResolverCache<IpAddr, V> for Cache<IpAddr, V> {
    fn get<Q>(&self, name: &Q) -> Option<V>
    where
        IpAddr: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.lookup(name)
    }

    fn remove<Q>(&self, name: &Q) -> Option<V>
    where
        IpAddr: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name)
            .map(|(value, _)| value)
    }

    fn insert(&self, key: IpAddr, value: V, valid_until: Instant) {
        insert_bounded(&self.entries, key, value, valid_until);
    }
}

fn insert_bounded<K: Hash + Eq, V>(
    entries: &Mutex<HashMap<K, (V, Instant)>>,
    key: K,
    value: V,
    valid_until: Instant,
) {
    let mut entries = entries
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if entries.len() >= MAX_ENTRIES {
        let now = Instant::now();
        entries.retain(|_, (_, until)| *until > now);
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
    }
    entries.insert(key, (value, valid_until));
}

/// What an authoritative cache answers for a name it does not hold: NXDOMAIN where the record
/// type can say so, otherwise nothing (and the resolver is asked).
pub trait MissingRecord: Sized {
    fn missing() -> Option<Self>;
}

impl MissingRecord for Txt {
    fn missing() -> Option<Self> {
        Some(Txt::Error(mail_auth::Error::Dns(DnsError::RecordNotFound(
            ResponseCode::NXDomain,
        ))))
    }
}

impl<T> MissingRecord for RecordSet<T> {
    fn missing() -> Option<Self> {
        Some(RecordSet {
            rrset: Arc::from(Vec::new().into_boxed_slice()),
            dnssec_status: mail_auth::DnssecStatus::Indeterminate,
        })
    }
}
