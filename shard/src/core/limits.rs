//! Token buckets for rate limits (per user sends, typing, history and presence; per
//! shard handshakes).

/// A token bucket: `rate` tokens a second, at most `burst` saved up. A rate of 0 means
/// unlimited. Time is passed in (ms) so the caller's coarse clock drives it.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    /// Tokens available now (fractional).
    tokens: f32,
    /// When `tokens` was last refilled, in ms.
    at_ms: u64,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(burst: u32, now_ms: u64) -> TokenBucket {
        TokenBucket { tokens: burst as f32, at_ms: now_ms }
    }

    /// Takes one token, or says how many ms until one is available.
    pub fn take(&mut self, rate: u32, burst: u32, now_ms: u64) -> Result<(), u32> {
        if rate == 0 {
            return Ok(());
        }
        let elapsed = now_ms.saturating_sub(self.at_ms) as f32 / 1000.0;
        self.tokens = (self.tokens + elapsed * rate as f32).min(burst.max(1) as f32);
        self.at_ms = now_ms;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err((((1.0 - self.tokens) / rate as f32) * 1000.0).ceil().max(1.0) as u32)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let mut b = TokenBucket::full(3, 0);
        assert!((0..3).all(|_| b.take(10, 3, 0).is_ok()));
        let wait = b.take(10, 3, 0).unwrap_err();
        assert!((95..=100).contains(&wait), "{wait}");
        assert!(b.take(10, 3, 100).is_ok(), "one token after 100 ms at 10/s");
        assert!(b.take(0, 0, 0).is_ok(), "rate 0 is unlimited");
    }
}
