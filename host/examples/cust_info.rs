//! Opens GPU 0 through Rust-CUDA's `cust` (feature `cust`), loads the kernels and prints what the
//! driver compiled (registers, shared and local memory per kernel), or why it cannot:
//! `cargo run -p resca-host --features cust --example cust_info`.

use std::process::ExitCode;

use resca_host::cuda::cust_driver::CustDevice;
use resca_host::pipeline::Kernel;

fn main() -> ExitCode {
    match CustDevice::open(0) {
        Ok(dev) => {
            println!("cust: {}", dev.description());
            println!("| kernel | registers | static smem | local |\n| --- | ---: | ---: | ---: |");
            for &kernel in Kernel::ALL {
                let a = dev.attributes(kernel);
                println!(
                    "| `{}` | {} | {} | {} |",
                    kernel.name(),
                    a.registers,
                    a.static_shared_bytes,
                    a.local_bytes
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("cust: {e}");
            ExitCode::from(2)
        }
    }
}
