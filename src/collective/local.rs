//! Ranks as threads of one process, meeting in shared memory.
//!
//! Every collective is a rendezvous: each rank deposits its buffer; the last to arrive combines
//! them (in rank order, so the result does not depend on arrival order) and wakes the others.
//! A rank that is dropped (its thread ended or panicked) or does not arrive within the timeout
//! makes the others fail with an error naming it, instead of hanging.

use super::Collective;
use anyhow::{bail, Result};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Sum,
    Broadcast(usize),
}

struct State {
    world: usize,
    slots: Vec<Option<Vec<f32>>>,
    op: Option<Op>,
    /// Completed collectives so far.
    generation: u64,
    result: Arc<Vec<f32>>,
    left: Vec<bool>,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
    timeout: Duration,
}

/// One rank of a [`group`].
pub struct LocalRank {
    rank: usize,
    shared: Arc<Shared>,
}

/// `world` connected ranks; a rank waits at most `timeout` for the others in any collective.
pub fn group(world: usize, timeout: Duration) -> Vec<LocalRank> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            world,
            slots: vec![None; world],
            op: None,
            generation: 0,
            result: Arc::new(vec![]),
            left: vec![false; world],
        }),
        cv: Condvar::new(),
        timeout,
    });
    (0..world)
        .map(|rank| LocalRank {
            rank,
            shared: shared.clone(),
        })
        .collect()
}

impl LocalRank {
    fn collective(&self, buf: &mut [f32], op: Op) -> Result<()> {
        let sh = &*self.shared;
        let mut st = sh
            .state
            .lock()
            .map_err(|_| anyhow::anyhow!("rank {}: communicator poisoned", self.rank))?;
        if let Some(r) = st.left.iter().position(|&l| l) {
            bail!("rank {}: rank {r} has left the group", self.rank);
        }
        match st.op {
            Some(o) if o != op => bail!(
                "rank {}: collective mismatch ({op:?} here, {o:?} on another rank)",
                self.rank
            ),
            _ => st.op = Some(op),
        }
        if let Some(len) = st.slots.iter().flatten().map(Vec::len).next() {
            if len != buf.len() {
                bail!(
                    "rank {}: buffer of {} elements, another rank sent {len}",
                    self.rank,
                    buf.len()
                );
            }
        }
        st.slots[self.rank] = Some(buf.to_vec());
        let gen = st.generation;
        if st.slots.iter().all(Option::is_some) {
            let slots: Vec<Vec<f32>> = st
                .slots
                .iter_mut()
                .map(|s| s.take().unwrap_or_default())
                .collect();
            let result = match op {
                Op::Sum => {
                    let mut acc = slots[0].clone();
                    for s in &slots[1..] {
                        for (a, x) in acc.iter_mut().zip(s) {
                            *a += *x;
                        }
                    }
                    acc
                }
                Op::Broadcast(root) => slots[root].clone(),
            };
            st.result = Arc::new(result);
            st.op = None;
            st.generation += 1;
            sh.cv.notify_all();
        } else {
            let start = Instant::now();
            while st.generation == gen {
                if let Some(r) = st.left.iter().position(|&l| l) {
                    bail!("rank {}: rank {r} left the group during {op:?}", self.rank);
                }
                let waited = start.elapsed();
                if waited >= sh.timeout {
                    let missing: Vec<usize> =
                        (0..st.world).filter(|&r| st.slots[r].is_none()).collect();
                    bail!(
                        "rank {}: rank(s) {missing:?} did not reach {op:?} within {:?}",
                        self.rank,
                        sh.timeout
                    );
                }
                st = sh
                    .cv
                    .wait_timeout(st, sh.timeout - waited)
                    .map_err(|_| anyhow::anyhow!("rank {}: communicator poisoned", self.rank))?
                    .0;
            }
        }
        buf.copy_from_slice(&st.result);
        Ok(())
    }
}

impl Collective for LocalRank {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.state.lock().map(|s| s.world).unwrap_or(0)
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        self.collective(buf, Op::Sum)
    }

    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()> {
        if root >= self.world_size() {
            bail!(
                "broadcast from rank {root} in a world of {}",
                self.world_size()
            );
        }
        self.collective(buf, Op::Broadcast(root))
    }
}

impl Drop for LocalRank {
    fn drop(&mut self) {
        if let Ok(mut st) = self.shared.state.lock() {
            st.left[self.rank] = true;
            self.shared.cv.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_and_broadcast_agree_on_every_rank() {
        let ranks = group(3, Duration::from_secs(10));
        let out: Vec<(Vec<f32>, Vec<f32>)> = std::thread::scope(|s| {
            let hs: Vec<_> = ranks
                .iter()
                .map(|c| {
                    s.spawn(move || {
                        let r = c.rank() as f32;
                        let mut a = vec![r, 10.0 * r, 0.1];
                        c.all_reduce_sum(&mut a).unwrap();
                        let mut b = vec![r; 2];
                        c.broadcast(&mut b, 2).unwrap();
                        c.barrier().unwrap();
                        (a, b)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let sum01 = 0.1f32 + 0.1 + 0.1;
        for (a, b) in &out {
            assert_eq!(a, &vec![3.0, 30.0, sum01]);
            assert_eq!(b, &vec![2.0, 2.0]);
        }
    }

    #[test]
    fn a_rank_that_leaves_or_never_arrives_fails_the_others() {
        let mut ranks = group(2, Duration::from_secs(30));
        let r1 = ranks.pop().unwrap();
        let r0 = ranks.pop().unwrap();
        let h = std::thread::spawn(move || {
            let start = Instant::now();
            let e = r0.all_reduce_sum(&mut [1.0]).unwrap_err().to_string();
            (e, start.elapsed())
        });
        std::thread::sleep(Duration::from_millis(50));
        drop(r1); // rank 1 dies without arriving
        let (e, waited) = h.join().unwrap();
        assert!(e.contains("rank 1 left the group"), "{e}");
        assert!(waited < Duration::from_secs(5));

        let ranks = group(2, Duration::from_millis(100));
        let e = ranks[0].all_reduce_sum(&mut [1.0]).unwrap_err().to_string();
        assert!(e.contains("rank(s) [1] did not reach Sum"), "{e}");
    }

    #[test]
    fn mismatched_buffers_are_refused() {
        let ranks = group(2, Duration::from_secs(1));
        std::thread::scope(|s| {
            let a = s.spawn(|| ranks[0].all_reduce_sum(&mut [1.0, 2.0]));
            std::thread::sleep(Duration::from_millis(50));
            let e = ranks[1].all_reduce_sum(&mut [1.0]).unwrap_err().to_string();
            assert!(
                e.contains("buffer of 1 elements, another rank sent 2"),
                "{e}"
            );
            // Rank 0 is still waiting; it times out cleanly.
            assert!(a.join().unwrap().is_err());
        });
    }
}
