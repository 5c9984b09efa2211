//! Prime factorization, two ways: a slow one ([`trial_division`]) and a fast one
//! ([`pollard_rho`]). Both return the prime factors of `n` in ascending order, with
//! multiplicity, so their product is `n`; `0` and `1` have no prime factors (empty list).
//!
//! They are the two "versions" of the demo backend: same answers, measurably different cost.
//!
//! * [`trial_division`] tries every divisor coprime to 2, 3 and 5 up to the square root of
//!   what is left. Its cost is set by the second-largest prime factor `q` and the square root
//!   of the largest `p`: about `max(q, √p) / 3.75` divisions. Small or smooth numbers take
//!   microseconds; a 62-bit semiprime of two 31-bit primes takes seconds, and a 64-bit prime
//!   (√n ≈ 4.3·10⁹) takes tens of seconds. That cost is the point of the demo.
//! * [`pollard_rho`] strips factors below 1000 by division, tests primality with a
//!   Miller–Rabin test that is deterministic for every `u64` (the first 12 prime bases), and
//!   splits composites with Brent's variant of Pollard's rho (`x² + c`, products of 128
//!   differences per gcd). Any `u64` takes well under a millisecond to a few milliseconds.

/// The prime factors of `n` by trial division, ascending, with multiplicity.
///
/// Cost: roughly `max(q, √p) / 3.75` divisions where `p` and `q` are the two largest prime
/// factors (see the module documentation); seconds for 62-bit semiprimes.
pub fn trial_division(mut n: u64) -> Vec<u64> {
    let mut out = Vec::new();
    if n < 2 {
        return out;
    }
    for p in [2u64, 3, 5] {
        while n % p == 0 {
            out.push(p);
            n /= p;
        }
    }
    // Candidates 7, 11, 13, 17, 19, 23, 29, 31, then +30 each: the residues mod 30 coprime to 30.
    const STEPS: [u64; 8] = [4, 2, 4, 2, 4, 6, 2, 6];
    let mut d: u64 = 7;
    let mut i = 0;
    // `d <= n / d` is `d * d <= n` without overflow.
    while d <= n / d {
        while n % d == 0 {
            out.push(d);
            n /= d;
        }
        // d stays below 2^32 + 30 here (d <= √n), so the addition cannot overflow.
        d += STEPS[i];
        i = (i + 1) % STEPS.len();
    }
    if n > 1 {
        out.push(n);
    }
    out
}

/// The prime factors of `n` by Miller–Rabin and Brent's Pollard rho, ascending, with
/// multiplicity. Deterministic: the same `n` always takes the same steps.
pub fn pollard_rho(mut n: u64) -> Vec<u64> {
    let mut out = Vec::new();
    if n < 2 {
        return out;
    }
    // Small factors by division: cheaper than rho, and rho needs an odd cofactor.
    let mut d = 2u64;
    while d < SMALL_LIMIT && d <= n / d {
        while n % d == 0 {
            out.push(d);
            n /= d;
        }
        d += if d == 2 { 1 } else { 2 };
    }
    if n > 1 {
        if n < SMALL_LIMIT * SMALL_LIMIT {
            // No factor below SMALL_LIMIT and n < SMALL_LIMIT²: n is prime.
            out.push(n);
        } else {
            split(n, &mut out);
        }
    }
    out.sort_unstable();
    out
}

/// Divisors below this are found by division in [`pollard_rho`].
const SMALL_LIMIT: u64 = 1000;

/// Push the prime factors of `n` (odd, > 1, no factor below [`SMALL_LIMIT`]) onto `out`.
fn split(n: u64, out: &mut Vec<u64>) {
    let mut pending = vec![n];
    while let Some(m) = pending.pop() {
        if m == 1 {
            continue;
        }
        if is_prime(m) {
            out.push(m);
            continue;
        }
        match find_factor(m) {
            Some(f) => {
                pending.push(f);
                pending.push(m / f);
            }
            // Rho found no split with any of the constants tried (not expected for a
            // composite u64); fall back to division so the answer is still right.
            None => out.extend(trial_division(m)),
        }
    }
}

/// `a * b mod m` without overflow.
fn mul_mod(a: u64, b: u64, m: u64) -> u64 {
    ((u128::from(a) * u128::from(b)) % u128::from(m)) as u64
}

fn pow_mod(mut base: u64, mut exp: u64, m: u64) -> u64 {
    let mut acc = 1u64 % m;
    base %= m;
    while exp > 0 {
        if exp & 1 == 1 {
            acc = mul_mod(acc, base, m);
        }
        base = mul_mod(base, base, m);
        exp >>= 1;
    }
    acc
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Miller–Rabin with the first 12 prime bases: exact for every n < 3.3·10²⁴, so for all u64.
pub fn is_prime(n: u64) -> bool {
    const BASES: [u64; 12] = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37];
    if n < 2 {
        return false;
    }
    for p in BASES {
        if n % p == 0 {
            return n == p;
        }
    }
    let s = (n - 1).trailing_zeros();
    let d = (n - 1) >> s;
    'bases: for a in BASES {
        let mut x = pow_mod(a, d, n);
        if x == 1 || x == n - 1 {
            continue;
        }
        for _ in 1..s {
            x = mul_mod(x, x, n);
            if x == n - 1 {
                continue 'bases;
            }
        }
        return false;
    }
    true
}

/// A non-trivial factor of the odd composite `n`, by Brent's rho with `f(x) = x² + c` for
/// c = 1, 2, …; `None` if none of the constants tried splits `n`.
fn find_factor(n: u64) -> Option<u64> {
    // A perfect square's root is found at once (rho is slow on some prime squares).
    let r = isqrt(n);
    if r * r == n {
        return Some(r);
    }
    (1..=64).find_map(|c| brent(n, c))
}

/// ⌊√n⌋.
fn isqrt(n: u64) -> u64 {
    let mut r = (n as f64).sqrt() as u64;
    // Correct the float estimate (off by at most one or two near 2^64).
    while r.checked_mul(r).is_none_or(|sq| sq > n) {
        r -= 1;
    }
    while (r + 1).checked_mul(r + 1).is_some_and(|sq| sq <= n) {
        r += 1;
    }
    r
}

/// One run of Brent's cycle finding for `x² + c mod n`; `None` when it only finds `n` itself.
fn brent(n: u64, c: u64) -> Option<u64> {
    const BATCH: u64 = 128;
    let f = |x: u64| (mul_mod(x, x, n) + c) % n;
    let (mut y, mut r, mut q, mut g) = (2u64, 1u64, 1u64, 1u64);
    let (mut x, mut ys) = (y, y);
    while g == 1 {
        x = y;
        for _ in 0..r {
            y = f(y);
        }
        let mut k = 0;
        while k < r && g == 1 {
            ys = y;
            for _ in 0..BATCH.min(r - k) {
                y = f(y);
                q = mul_mod(q, x.abs_diff(y), n);
            }
            g = gcd(q, n);
            k += BATCH;
        }
        r *= 2;
    }
    if g == n {
        // The batch overshot: redo its steps one gcd at a time.
        loop {
            ys = f(ys);
            g = gcd(x.abs_diff(ys), n);
            if g > 1 {
                break;
            }
        }
    }
    (g != n).then_some(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_numbers_agree_with_each_other_and_multiply_back() {
        for n in 0..5000u64 {
            let t = trial_division(n);
            assert_eq!(t, pollard_rho(n), "n = {n}");
            if n >= 1 {
                assert_eq!(t.iter().product::<u64>(), n, "n = {n}");
            }
            assert!(t.iter().all(|&p| is_prime(p)), "n = {n}: {t:?}");
            assert!(t.windows(2).all(|w| w[0] <= w[1]), "n = {n}: {t:?}");
        }
    }

    #[test]
    fn miller_rabin_matches_a_sieve_and_known_pseudoprimes() {
        let limit = 100_000usize;
        let mut sieve = vec![true; limit];
        sieve[0] = false;
        sieve[1] = false;
        for i in 2..limit {
            if sieve[i] {
                for j in (i * i..limit).step_by(i) {
                    sieve[j] = false;
                }
            }
        }
        for (n, &prime) in sieve.iter().enumerate() {
            assert_eq!(is_prime(n as u64), prime, "n = {n}");
        }
        // Strong pseudoprimes to several bases, and Carmichael numbers.
        for n in [
            561u64,
            41041,
            3_215_031_751,
            2_152_302_898_747,
            3_474_749_660_383,
            341_550_071_728_321,
            3_825_123_056_546_413_051,
        ] {
            assert!(!is_prime(n), "{n} is composite");
        }
        for p in [2_147_483_647u64, 18_446_744_073_709_551_557, (1 << 61) - 1] {
            assert!(is_prime(p), "{p} is prime");
        }
    }

    #[test]
    fn isqrt_is_exact_near_the_top() {
        for n in [
            u64::MAX,
            u64::MAX - 1,
            4_294_967_295 * 4_294_967_295,
            1 << 62,
            0,
            1,
            2,
            3,
            4,
        ] {
            let r = isqrt(n);
            assert!(r * r <= n);
            assert!(
                (r + 1).checked_mul(r + 1).is_none_or(|sq| sq > n),
                "n = {n}"
            );
        }
    }
}
