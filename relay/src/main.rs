fn main() {
    eprintln!("sluice-relay: under construction");
}
