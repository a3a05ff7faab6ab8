fn main() {
    let cli = service::app::config::parse_or_exit(std::env::args_os());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    let code = runtime.block_on(service::app::cli::main(cli));
    drop(runtime);
    std::process::exit(code);
}
