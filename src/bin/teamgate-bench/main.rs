//! teamgate-bench: the load benchmark (work in progress).

fn main() {}
