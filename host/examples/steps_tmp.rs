use resca_host::inputs::seeded_noise;
use resca_reference::cache::{MethodConfig, MethodKind, build_hook};
use resca_reference::ddim::DdimSchedule;
use resca_reference::{Dit, DitConfig, Sampler};
fn main() {
    let config = DitConfig::preset("DiT-B/2").unwrap();
    let model = Dit::random(config.clone(), 0).unwrap();
    let resca = MethodConfig::new(MethodKind::ResCa, 5, 1);
    resca.prepare(&model);
    let noise1 = seeded_noise(0, 1, &config);
    let noise = ndarray::concatenate(ndarray::Axis(0), &[noise1.view(), noise1.view()]).unwrap();
    let labels = vec![1, config.null_label()];
    let sampler = Sampler::Ddim(DdimSchedule::new(50).unwrap());
    let mut dense_full = vec![0.0; 50];
    let mut dense_resca = vec![0.0; 50];
    let mut is_dense = vec![false; 50];
    for _round in 0..2 {
        for m in [MethodConfig::full(), resca.clone()] {
            let mut hook = build_hook(&m, &config, 2, sampler.orientation()).unwrap();
            let t = resca_reference::sample(&model, noise.view(), &labels, Some(1.5), &sampler, hook.as_mut(), &mut |_, _| {}).unwrap();
            for (i, (s, w)) in t.step_seconds.iter().zip(&t.work).enumerate() {
                if m.kind == MethodKind::Full { dense_full[i] += s * 500.0; } else { dense_resca[i] += s * 500.0; is_dense[i] = w.attention_tokens > 0; }
            }
        }
    }
    for i in 0..50 { if is_dense[i] { println!("step {i:2}: full {:.0} ms, resca dense {:.0} ms", dense_full[i], dense_resca[i]); } }
    let sparse: f64 = (0..50).filter(|&i| !is_dense[i]).map(|i| dense_resca[i]).sum::<f64>() / 39.0;
    let fullavg: f64 = dense_full.iter().sum::<f64>() / 50.0;
    println!("full avg {fullavg:.0} ms; resca sparse avg {sparse:.1} ms");
}
