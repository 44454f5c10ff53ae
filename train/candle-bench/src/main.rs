//! Times one training step (forward + backward) of a DiT-shaped stack in candle on the CPU,
//! to compare with PyTorch before choosing the training framework (see train/README.md).
//! Usage: cargo run --release -p candle-bench -- [batch] [hidden] [depth]
use candle_core::{D, DType, Device, Result, Tensor, Var};
use std::time::Instant;

fn linear(x: &Tensor, w: &Var, b: &Var) -> Result<Tensor> {
    x.broadcast_matmul(&w.as_tensor().t()?)?.broadcast_add(b.as_tensor())
}

fn layer_norm(x: &Tensor) -> Result<Tensor> {
    let mu = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mu)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    xc.broadcast_div(&(var + 1e-6)?.sqrt()?)
}

fn main() -> Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let (b, d, depth) = (args.first().copied().unwrap_or(32), args.get(1).copied().unwrap_or(128), args.get(2).copied().unwrap_or(6));
    let (n, h) = (256usize, 4usize);
    let dev = Device::Cpu;
    let mk = |o: usize, i: usize| Var::from_tensor(&(Tensor::randn(0f32, 1.0, (o, i), &dev).unwrap() * (1.0 / (i as f64).sqrt())).unwrap()).unwrap();
    let mkb = |o: usize| Var::zeros(o, DType::F32, &dev).unwrap();
    let mut params = Vec::new();
    for _ in 0..depth {
        params.push((mk(3 * d, d), mkb(3 * d), mk(d, d), mkb(d), mk(4 * d, d), mkb(4 * d), mk(d, 4 * d), mkb(d)));
    }
    let x0 = Tensor::randn(0f32, 1.0, (b, n, d), &dev)?;
    for it in 0..4 {
        let t0 = Instant::now();
        let mut x = x0.clone();
        for (wq, bq, wp, bp, w1, b1, w2, b2) in &params {
            let qkv = linear(&layer_norm(&x)?, wq, bq)?.reshape((b, n, 3, h, d / h))?.permute((2, 0, 3, 1, 4))?;
            let (q, k, v) = (qkv.get(0)?.contiguous()?, qkv.get(1)?.contiguous()?, qkv.get(2)?.contiguous()?);
            let att = (q.matmul(&k.t()?)? * (1.0 / ((d / h) as f64).sqrt()))?;
            let att = candle_nn::ops::softmax(&att, D::Minus1)?;
            let o = att.matmul(&v)?.transpose(1, 2)?.reshape((b, n, d))?;
            x = (x + linear(&o, wp, bp)?)?;
            let m = linear(&linear(&layer_norm(&x)?, w1, b1)?.gelu()?, w2, b2)?;
            x = (x + m)?;
        }
        let loss = x.sqr()?.mean_all()?;
        let grads = loss.backward()?;
        let _ = grads.get(&params[0].0).unwrap();
        println!("iter {it}: batch {b} hidden {d} depth {depth}: {:.3} s/step", t0.elapsed().as_secs_f64());
    }
    Ok(())
}
