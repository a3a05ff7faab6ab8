//! `mce-sim`: the simulator as a process, for compose and manual runs.
//! `MCE_SIM_ADDR` (default 127.0.0.1:9090) and `MCE_SIM_REFRESH_TOKENS`
//! (comma-separated refresh tokens to accept).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .init();
    let addr: std::net::SocketAddr = std::env::var("MCE_SIM_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:9090".into())
        .parse()?;
    let sim = mce_sim::Sim::start_on(addr, mce_sim::SimConfig::default()).await?;
    for token in std::env::var("MCE_SIM_REFRESH_TOKENS")
        .unwrap_or_default()
        .split(',')
        .filter(|t| !t.is_empty())
    {
        sim.add_refresh_token(token.trim());
    }
    tracing::info!(url = %sim.url(), "MCE simulator listening");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
