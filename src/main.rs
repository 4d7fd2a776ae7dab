fn main() {
    runner::alloc::keep_large_blocks_on_heap();
    std::process::exit(runner::cli::main());
}
