//! `GET /events` query parameters (`host/src/http/mod.rs`): any query string a client sends,
//! decoded as warp decodes it, gives an `EventQuery` or an error message, never a panic;
//! an accepted query has a limit in range.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(params) = serde_urlencoded::from_bytes::<HashMap<String, String>>(data) else {
        return;
    };
    if let Ok(query) = kpulse::http::parse_event_query(&params) {
        assert!((1..=kpulse::http::MAX_EVENTS_LIMIT).contains(&query.limit));
        if let (Some(since), Some(until)) = (query.since, query.until) {
            let _ = until - since;
        }
    }
});
