//! Ranks as processes (on one machine or several) meeting over TCP in a star: rank 0 listens on
//! `MASTER_ADDR:MASTER_PORT`, every other rank connects to it.
//!
//! It serves two purposes: CPU data parallelism across processes or machines, and the
//! rendezvous of GPU ranks, which exchange NCCL's unique id through [`Collective::broadcast`]
//! before NCCL takes over. Sums are formed on rank 0 in rank order (the same order as
//! [`super::local`]), so every rank ends with the same bits whatever the arrival order. Every
//! wait is bounded: a rank that does not connect, dies, or stops answering makes the others fail
//! with an error naming it and the address, instead of hanging.

use super::Collective;
use anyhow::{bail, Context, Result};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Identifies runner's protocol (and its version) in the first bytes of every connection.
const MAGIC: &[u8; 8] = b"RUNNER01";

const OP_SUM: u8 = 1;
const OP_BROADCAST: u8 = 2;

/// Where rank 0 listens and how long any rank waits for any other.
#[derive(Clone, Debug)]
pub struct Rendezvous {
    /// `host:port` of rank 0.
    pub addr: String,
    pub rank: usize,
    pub world: usize,
    pub timeout: Duration,
}

impl Rendezvous {
    /// From the launcher environment (`RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`), as
    /// `torch.distributed.launch` and Slurm wrappers set it; `None` when `WORLD_SIZE` is unset.
    pub fn from_env(timeout: Duration) -> Result<Option<Self>> {
        Self::from_vars(|k| std::env::var(k).ok(), timeout)
    }

    /// [`Rendezvous::from_env`] over any variable lookup.
    pub fn from_vars(
        var: impl Fn(&str) -> Option<String>,
        timeout: Duration,
    ) -> Result<Option<Self>> {
        let get = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        let Some(world) = get("WORLD_SIZE") else {
            return Ok(None);
        };
        let parse = |k: &str, v: &str| -> Result<usize> {
            v.trim()
                .parse()
                .with_context(|| format!("environment variable {k}={v:?} is not a number"))
        };
        let world = parse("WORLD_SIZE", &world)?;
        let rank = match get("RANK") {
            Some(r) => parse("RANK", &r)?,
            None => bail!("WORLD_SIZE is set but RANK is not"),
        };
        if world == 0 || rank >= world {
            bail!("RANK={rank} must be below WORLD_SIZE={world}");
        }
        let host = get("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let port = match get("MASTER_PORT") {
            Some(p) => parse("MASTER_PORT", &p)?,
            None => bail!("WORLD_SIZE is set but MASTER_PORT is not"),
        };
        Ok(Some(Self {
            addr: format!("{host}:{port}"),
            rank,
            world,
            timeout,
        }))
    }
}

enum Links {
    /// Rank 0: the stream of rank r at index r - 1.
    Root(Vec<TcpStream>),
    Leaf(TcpStream),
}

/// One rank of a TCP group.
pub struct TcpRank {
    rank: usize,
    world: usize,
    addr: String,
    timeout: Duration,
    links: Mutex<Links>,
}

fn resolve(addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("cannot resolve rendezvous address {addr}"))?
        .next()
        .with_context(|| format!("rendezvous address {addr} resolves to nothing"))
}

fn hello(rank: usize, world: usize) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend((rank as u32).to_le_bytes());
    h.extend((world as u32).to_le_bytes());
    h
}

/// Connects rank `rv.rank` to its group; returns when all `rv.world` ranks are connected (rank
/// 0) or when rank 0 has accepted this rank (the others).
pub fn connect(rv: &Rendezvous) -> Result<TcpRank> {
    if rv.world == 0 || rv.rank >= rv.world {
        bail!("rank {} is not below the world size {}", rv.rank, rv.world);
    }
    let deadline = Instant::now() + rv.timeout;
    let links = if rv.rank == 0 {
        Links::Root(accept_all(rv, deadline)?)
    } else {
        Links::Leaf(connect_root(rv, deadline)?)
    };
    Ok(TcpRank {
        rank: rv.rank,
        world: rv.world,
        addr: rv.addr.clone(),
        timeout: rv.timeout,
        links: Mutex::new(links),
    })
}

fn accept_all(rv: &Rendezvous, deadline: Instant) -> Result<Vec<TcpStream>> {
    let sock = resolve(&rv.addr)?;
    let listener = TcpListener::bind(sock)
        .with_context(|| format!("rank 0: cannot listen on {} for the other ranks", rv.addr))?;
    listener.set_nonblocking(true)?;
    let mut peers: Vec<Option<TcpStream>> = (1..rv.world).map(|_| None).collect();
    while peers.iter().any(Option::is_none) {
        match listener.accept() {
            Ok((mut s, from)) => {
                s.set_nonblocking(false)?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(rv.timeout))?;
                s.set_write_timeout(Some(rv.timeout))?;
                let mut h = [0u8; 16];
                if s.read_exact(&mut h).is_err() || &h[..8] != MAGIC {
                    tracing::warn!(
                        "rank 0: ignoring a connection from {from} that is not a runner rank"
                    );
                    continue;
                }
                let r = u32::from_le_bytes([h[8], h[9], h[10], h[11]]) as usize;
                let w = u32::from_le_bytes([h[12], h[13], h[14], h[15]]) as usize;
                if w != rv.world {
                    bail!("rank 0: rank {r} (from {from}) was launched with WORLD_SIZE={w}, this group has {}", rv.world);
                }
                if r == 0 || r >= rv.world {
                    bail!(
                        "rank 0: a rank from {from} claims rank {r} in a world of {}",
                        rv.world
                    );
                }
                if peers[r - 1].is_some() {
                    bail!("rank 0: rank {r} connected twice (second time from {from})");
                }
                s.write_all(&hello(0, rv.world))?;
                peers[r - 1] = Some(s);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<usize> = peers
                        .iter()
                        .enumerate()
                        .filter(|(_, p)| p.is_none())
                        .map(|(i, _)| i + 1)
                        .collect();
                    bail!(
                        "rank 0: rank(s) {missing:?} did not connect to {} within {:?}",
                        rv.addr,
                        rv.timeout
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e).with_context(|| format!("rank 0: accepting on {}", rv.addr)),
        }
    }
    Ok(peers.into_iter().flatten().collect())
}

fn connect_root(rv: &Rendezvous, deadline: Instant) -> Result<TcpStream> {
    let sock = resolve(&rv.addr)?;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "rank {}: rank 0 did not accept at {} within {:?}",
                rv.rank,
                rv.addr,
                rv.timeout
            );
        }
        match TcpStream::connect_timeout(&sock, left.min(Duration::from_secs(1))) {
            Ok(mut s) => {
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(rv.timeout))?;
                s.set_write_timeout(Some(rv.timeout))?;
                s.write_all(&hello(rv.rank, rv.world))
                    .with_context(|| format!("rank {}: greeting rank 0 at {}", rv.rank, rv.addr))?;
                let mut h = [0u8; 16];
                s.read_exact(&mut h).with_context(|| {
                    format!("rank {}: rank 0 at {} did not answer", rv.rank, rv.addr)
                })?;
                if &h[..8] != MAGIC {
                    bail!(
                        "rank {}: {} is not a runner rank 0 (wrong greeting)",
                        rv.rank,
                        rv.addr
                    );
                }
                return Ok(s);
            }
            // Rank 0 may start later than this rank: retry until the deadline.
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn header(op: u8, root: usize, len: usize) -> [u8; 13] {
    let mut h = [0u8; 13];
    h[0] = op;
    h[1..5].copy_from_slice(&(root as u32).to_le_bytes());
    h[5..13].copy_from_slice(&(len as u64).to_le_bytes());
    h
}

fn write_f32(s: &mut TcpStream, buf: &[f32]) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(buf.len() * 4);
    for x in buf {
        bytes.extend(x.to_le_bytes());
    }
    s.write_all(&bytes)
}

fn read_f32(s: &mut TcpStream, out: &mut [f32]) -> std::io::Result<()> {
    let mut bytes = vec![0u8; out.len() * 4];
    s.read_exact(&mut bytes)?;
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
    Ok(())
}

impl TcpRank {
    fn io_error(&self, peer: usize, what: &str, e: std::io::Error) -> anyhow::Error {
        let why = match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => {
                format!("no answer within {:?}", self.timeout)
            }
            ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => {
                "it closed the connection (did it exit?)".into()
            }
            _ => e.to_string(),
        };
        anyhow::anyhow!(
            "rank {}: {what} with rank {peer} (group at {}): {why}",
            self.rank,
            self.addr
        )
    }

    /// Rank 0 reads every other rank's header and buffer in rank order.
    fn gather(
        &self,
        peers: &mut [TcpStream],
        op: u8,
        root: usize,
        len: usize,
    ) -> Result<Vec<Vec<f32>>> {
        let mut bufs = Vec::with_capacity(peers.len());
        for (i, s) in peers.iter_mut().enumerate() {
            let r = i + 1;
            let mut h = [0u8; 13];
            s.read_exact(&mut h)
                .map_err(|e| self.io_error(r, "collective", e))?;
            if h != header(op, root, len) {
                bail!(
                    "rank 0: rank {r} called a different collective (op {} root {} length {}, here op {op} root {root} length {len})",
                    h[0],
                    u32::from_le_bytes([h[1], h[2], h[3], h[4]]),
                    u64::from_le_bytes([h[5], h[6], h[7], h[8], h[9], h[10], h[11], h[12]])
                );
            }
            let mut b = vec![0f32; len];
            read_f32(s, &mut b).map_err(|e| self.io_error(r, "collective", e))?;
            bufs.push(b);
        }
        Ok(bufs)
    }

    fn collective(&self, buf: &mut [f32], op: u8, root: usize) -> Result<()> {
        let mut links = self
            .links
            .lock()
            .map_err(|_| anyhow::anyhow!("rank {}: communicator poisoned", self.rank))?;
        match &mut *links {
            Links::Root(peers) => {
                let others = self.gather(peers, op, root, buf.len())?;
                match op {
                    OP_SUM => {
                        // buf is rank 0's; add the others in rank order.
                        for o in &others {
                            for (a, x) in buf.iter_mut().zip(o) {
                                *a += *x;
                            }
                        }
                    }
                    _ if root > 0 => buf.copy_from_slice(&others[root - 1]),
                    _ => {}
                }
                for (i, s) in peers.iter_mut().enumerate() {
                    write_f32(s, buf).map_err(|e| self.io_error(i + 1, "collective", e))?;
                }
            }
            Links::Leaf(s) => {
                s.write_all(&header(op, root, buf.len()))
                    .map_err(|e| self.io_error(0, "collective", e))?;
                write_f32(s, buf).map_err(|e| self.io_error(0, "collective", e))?;
                read_f32(s, buf).map_err(|e| self.io_error(0, "collective", e))?;
            }
        }
        Ok(())
    }
}

impl Collective for TcpRank {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        self.collective(buf, OP_SUM, 0)
    }

    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()> {
        if root >= self.world {
            bail!("broadcast from rank {root} in a world of {}", self.world);
        }
        self.collective(buf, OP_BROADCAST, root)
    }
}

/// `bytes` of `root` on every rank (e.g. NCCL's unique id), carried as f32 bit patterns.
pub fn broadcast_bytes(c: &dyn Collective, bytes: &mut [u8], root: usize) -> Result<()> {
    let mut words: Vec<f32> = bytes
        .chunks(4)
        .map(|ch| {
            let mut w = [0u8; 4];
            w[..ch.len()].copy_from_slice(ch);
            f32::from_bits(u32::from_le_bytes(w))
        })
        .collect();
    c.broadcast(&mut words, root)?;
    for (ch, w) in bytes.chunks_mut(4).zip(&words) {
        let b = w.to_bits().to_le_bytes();
        ch.copy_from_slice(&b[..ch.len()]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap()
    }

    fn rv(port: u16, rank: usize, world: usize, ms: u64) -> Rendezvous {
        Rendezvous {
            addr: format!("127.0.0.1:{port}"),
            rank,
            world,
            timeout: Duration::from_millis(ms),
        }
    }

    #[test]
    fn sums_broadcasts_and_bytes_agree_with_the_local_group() {
        let port = free_port();
        let world = 3;
        let out: Vec<(Vec<f32>, Vec<f32>, Vec<u8>)> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..world)
                .map(|r| {
                    s.spawn(move || {
                        // Leaves start first: they retry until rank 0 listens.
                        if r == 0 {
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        let c = connect(&rv(port, r, world, 10_000)).unwrap();
                        let x = r as f32;
                        let mut a = vec![x, 10.0 * x, 0.1];
                        c.all_reduce_sum(&mut a).unwrap();
                        let mut b = vec![x; 2];
                        c.broadcast(&mut b, 2).unwrap();
                        c.barrier().unwrap();
                        let mut id: Vec<u8> = if r == 0 {
                            (0..10).collect()
                        } else {
                            vec![0; 10]
                        };
                        broadcast_bytes(&c, &mut id, 0).unwrap();
                        (a, b, id)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // The local group's sums, for the same inputs: the bits must agree.
        let locals = super::super::local::group(world, Duration::from_secs(10));
        let local: Vec<Vec<f32>> = std::thread::scope(|s| {
            let hs: Vec<_> = locals
                .iter()
                .map(|c| {
                    s.spawn(move || {
                        let x = c.rank() as f32;
                        let mut a = vec![x, 10.0 * x, 0.1];
                        c.all_reduce_sum(&mut a).unwrap();
                        a
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for ((a, b, id), l) in out.iter().zip(&local) {
            assert_eq!(a, l);
            assert_eq!(a[..2], [3.0, 30.0]);
            assert_eq!(b, &vec![2.0, 2.0]);
            assert_eq!(id, &(0..10).collect::<Vec<u8>>());
        }
    }

    #[test]
    fn missing_and_dead_ranks_fail_within_the_timeout_naming_them() {
        // Rank 1 never comes.
        let port = free_port();
        let start = Instant::now();
        let e = connect(&rv(port, 0, 2, 300)).err().unwrap().to_string();
        assert!(e.contains("rank(s) [1] did not connect"), "{e}");
        assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");
        assert!(start.elapsed() < Duration::from_secs(5));
        // Rank 0 never comes.
        let e = connect(&rv(free_port(), 1, 2, 300))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("rank 1: rank 0 did not accept"), "{e}");
        // Rank 1 connects, then exits before the first collective.
        let port = free_port();
        let e = std::thread::scope(|s| {
            let leaf = s.spawn(move || {
                let c = connect(&rv(port, 1, 2, 5_000)).unwrap();
                drop(c);
            });
            let c = connect(&rv(port, 0, 2, 5_000)).unwrap();
            leaf.join().unwrap();
            c.all_reduce_sum(&mut [1.0]).unwrap_err().to_string()
        });
        assert!(
            e.contains("with rank 1") && e.contains("closed the connection"),
            "{e}"
        );
    }

    #[test]
    fn mismatched_collectives_are_refused() {
        let port = free_port();
        let e = std::thread::scope(|s| {
            let leaf = s.spawn(move || {
                let c = connect(&rv(port, 1, 2, 2_000)).unwrap();
                let _ = c.all_reduce_sum(&mut [1.0]);
            });
            let c = connect(&rv(port, 0, 2, 2_000)).unwrap();
            let e = c.all_reduce_sum(&mut [1.0, 2.0]).unwrap_err().to_string();
            leaf.join().unwrap();
            e
        });
        assert!(e.contains("rank 1 called a different collective"), "{e}");
    }

    #[test]
    fn environment_is_read_like_torch_distributed() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let t = Duration::from_secs(1);
        assert!(Rendezvous::from_vars(env(&[]), t).unwrap().is_none());
        let rv = Rendezvous::from_vars(
            env(&[
                ("WORLD_SIZE", "4"),
                ("RANK", "3"),
                ("MASTER_ADDR", "node7"),
                ("MASTER_PORT", "29500"),
            ]),
            t,
        )
        .unwrap()
        .unwrap();
        assert_eq!((rv.rank, rv.world, rv.addr.as_str()), (3, 4, "node7:29500"));
        let err = |pairs| {
            Rendezvous::from_vars(env(pairs), t)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(&[("WORLD_SIZE", "2"), ("MASTER_PORT", "1")]),
            "WORLD_SIZE is set but RANK is not"
        );
        assert_eq!(
            err(&[("WORLD_SIZE", "2"), ("RANK", "2"), ("MASTER_PORT", "1")]),
            "RANK=2 must be below WORLD_SIZE=2"
        );
        assert_eq!(
            err(&[("WORLD_SIZE", "two")]),
            "environment variable WORLD_SIZE=\"two\" is not a number"
        );
        assert_eq!(
            err(&[("WORLD_SIZE", "2"), ("RANK", "1")]),
            "WORLD_SIZE is set but MASTER_PORT is not"
        );
    }
}
