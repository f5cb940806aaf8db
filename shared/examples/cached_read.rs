//! Reads a secret through the caching client twice and says where each
//! read came from; never prints the value.
//!
//! ```sh
//! cargo run -p rekey-shared --example cached_read -- https://127.0.0.1:8443 admin.pem demo/db/orders
//! ```

use rekey_shared::cache::CachingClient;
use rekey_shared::identity::Identity;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(server), Some(identity), Some(name)) = (args.next(), args.next(), args.next()) else {
        return Err("usage: cached_read SERVER IDENTITY NAME".into());
    };
    let identity = Identity::load(identity.as_ref())?;
    let channel = rekey_shared::channel::connect(&server, &identity).await?;
    let cache = CachingClient::new(channel, Duration::from_secs(300));
    // Reads are kept once the Watch stream is open.
    if !cache.ready(Duration::from_secs(5)).await {
        println!("the Watch stream did not open: every read goes to the server");
    }
    for attempt in 1..=2 {
        let started = Instant::now();
        let value = cache.get(&name).await?;
        println!(
            "read {attempt}: {} bytes in {:?}",
            value.as_bytes().len(),
            started.elapsed()
        );
    }
    Ok(())
}
