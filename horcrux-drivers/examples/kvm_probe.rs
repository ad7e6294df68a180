//! Prints which accelerator `--accel auto` would pick on this host.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    println!("{:?}", horcrux_drivers::resolve_accel(horcrux_drivers::Accel::Auto).await);
}
