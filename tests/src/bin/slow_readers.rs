//! `shoal-slow-readers`: see [`shoal_tests::slow`].

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(shoal_tests::slow::main(&args));
}
