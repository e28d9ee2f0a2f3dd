use sample::{Candidates, Epsilon, LogitsProcessor, Rng, SampleContext, Temperature, TopNSigma};
use std::time::Instant;
fn main() {
    let n = 49152;
    let mut rng = Rng::seed_from_u64(1);
    let row: Vec<f32> = (0..n)
        .map(|_| ((rng.next_f64() - 0.5) * 12.0) as f32)
        .collect();
    let mut c = Candidates::new();
    let reps = 500;
    let t = Instant::now();
    for _ in 0..reps {
        c.fill(&row);
    }
    println!(
        "fill {:.1} us",
        t.elapsed().as_secs_f64() * 1e6 / reps as f64
    );
    for (name, mut p) in [
        (
            "epsilon",
            Box::new(Epsilon::new(0.0003)) as Box<dyn LogitsProcessor>,
        ),
        ("top_n_sigma", Box::new(TopNSigma::new(1.0))),
        (
            "dynatemp",
            Box::new(Temperature::with_dynatemp(0.8, 0.5, 1.0)),
        ),
    ] {
        let t = Instant::now();
        for _ in 0..reps {
            c.fill(&row);
            p.process(&mut c, &SampleContext::new(&[]));
        }
        println!(
            "{name} (+fill) {:.1} us",
            t.elapsed().as_secs_f64() * 1e6 / reps as f64
        );
    }
    let t = Instant::now();
    let mut s = 0.0;
    for _ in 0..reps {
        c.fill(&row);
        s += c.max_logit();
    }
    println!(
        "max (+fill) {:.1} us {s}",
        t.elapsed().as_secs_f64() * 1e6 / reps as f64
    );
}
