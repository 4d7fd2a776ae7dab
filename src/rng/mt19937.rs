//! NumPy's legacy `RandomState` (Mersenne Twister MT19937), as far as the study used it to pick
//! architectures: `RandomState(seed).permutation(n)` and `randint(n)`.
//!
//! The study chose its NB101/NB201 validation architectures as
//! `sorted(RandomState(seed).permutation(len(archset))[:k])`; reproducing the generator draw
//! for draw makes runner evaluate the same architectures as the study for the same seed and
//! archset order. Everything else in runner uses the named ChaCha streams of [`super`].

const N: usize = 624;
const M: usize = 397;

/// MT19937 with NumPy's integer seeding (`init_genrand`) and bounded draws.
#[derive(Clone)]
pub struct RandomState {
    mt: [u32; N],
    pos: usize,
}

impl RandomState {
    /// `numpy.random.RandomState(seed)` for an integer seed (NumPy requires 0 <= seed < 2^32).
    pub fn new(seed: u32) -> Self {
        let mut mt = [0u32; N];
        mt[0] = seed;
        for i in 1..N {
            mt[i] = 1_812_433_253u32
                .wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        Self { mt, pos: N }
    }

    fn refill(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        const MATRIX_A: u32 = 0x9908_b0df;
        for i in 0..N {
            let y = (self.mt[i] & UPPER) | (self.mt[(i + 1) % N] & LOWER);
            let mut v = self.mt[(i + M) % N] ^ (y >> 1);
            if y & 1 == 1 {
                v ^= MATRIX_A;
            }
            self.mt[i] = v;
        }
        self.pos = 0;
    }

    /// The next 32-bit output (`genrand_int32`).
    pub fn next_u32(&mut self) -> u32 {
        if self.pos >= N {
            self.refill();
        }
        let mut y = self.mt[self.pos];
        self.pos += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// A uniform integer in `0..=max` by NumPy's masked rejection (`random_interval`, and
    /// legacy `randint` for ranges below 2^32).
    pub fn interval(&mut self, max: u32) -> u32 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        for s in [1, 2, 4, 8, 16] {
            mask |= mask >> s;
        }
        loop {
            let v = self.next_u32() & mask;
            if v <= max {
                return v;
            }
        }
    }

    /// `randint(n)`: uniform in `0..n` (n >= 1, n <= 2^32).
    pub fn randint(&mut self, n: u64) -> u64 {
        assert!((1..=1u64 << 32).contains(&n), "randint({n}) out of range");
        self.interval((n - 1) as u32) as u64
    }

    /// `permutation(n)`: the legacy Fisher-Yates shuffle of `0..n`, from the end.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.interval(i as u32) as usize;
            v.swap(i, j);
        }
        v
    }
}

/// The study's validation subset: `sorted(RandomState(seed).permutation(len)[:k])`, or every
/// index when `len < k` (the reference then warns and takes them all). Seeds are taken modulo
/// 2^32, NumPy's range.
pub fn validation_subset(seed: u64, len: usize, k: usize) -> Vec<usize> {
    if len < k {
        return (0..len).collect();
    }
    let mut pick: Vec<usize> = RandomState::new(seed as u32)
        .permutation(len)
        .into_iter()
        .take(k)
        .collect();
    pick.sort_unstable();
    pick
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values printed by NumPy (tests/fixtures/gen_numpy_random.py, NumPy 1.24).
    #[test]
    fn matches_numpy_random_state() {
        let text = include_str!("../../tests/fixtures/numpy_random.json");
        let f: serde_json::Value = serde_json::from_str(text).unwrap();
        for case in f["permutation"].as_array().unwrap() {
            let seed = case["seed"].as_u64().unwrap();
            let n = case["n"].as_u64().unwrap() as usize;
            let want: Vec<usize> = case["value"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(
                RandomState::new(seed as u32).permutation(n),
                want,
                "seed {seed} n {n}"
            );
        }
        for case in f["randint"].as_array().unwrap() {
            let seed = case["seed"].as_u64().unwrap();
            let n = case["n"].as_u64().unwrap();
            let mut r = RandomState::new(seed as u32);
            let got: Vec<u64> = (0..case["value"].as_array().unwrap().len())
                .map(|_| r.randint(n))
                .collect();
            let want: Vec<u64> = case["value"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            assert_eq!(got, want, "seed {seed} n {n}");
        }
        for case in f["subset"].as_array().unwrap() {
            let seed = case["seed"].as_u64().unwrap();
            let n = case["n"].as_u64().unwrap() as usize;
            let k = case["k"].as_u64().unwrap() as usize;
            let want: Vec<usize> = case["value"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(
                validation_subset(seed, n, k),
                want,
                "seed {seed} n {n} k {k}"
            );
        }
        let first: Vec<u32> = {
            let mut r = RandomState::new(5489);
            (0..3).map(|_| r.next_u32()).collect()
        };
        // The reference MT19937 outputs for the default seed 5489.
        assert_eq!(first, vec![3_499_211_612, 581_869_302, 3_890_346_734]);
    }
}
