//! `cargo run --release -p hodei-sim --example replay -- TRACE CONFIG...`: what
//! `hodei simulate --trace TRACE --config CONFIG...` prints, without building the whole
//! `hodei` binary (handy when tuning a configuration).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let trace = args.next().ok_or("usage: replay TRACE CONFIG...")?;
    if !std::path::Path::new(&trace).exists() {
        // A ci-day trace of 10 tenants and 100,000 jobs, seed 1, written first.
        let jobs = hodei_sim::generate::generate(hodei_sim::generate::Params {
            profile: hodei_sim::generate::Profile::CiDay,
            tenants: 10,
            jobs: 100_000,
            seed: 1,
        });
        hodei_sim::trace::write(
            &jobs,
            hodei_sim::trace::Format::of(std::path::Path::new(&trace)),
            std::fs::File::create(&trace)?,
        )?;
    }
    let jobs = hodei_sim::trace::read_file(std::path::Path::new(&trace))?;
    let mut reports = Vec::new();
    for path in args {
        let config = hodei_sim::SimConfig::load(std::path::Path::new(&path))?;
        let started = std::time::Instant::now();
        reports.push(hodei_sim::simulate(&config, &jobs)?);
        eprintln!("{path}: {:.2} s", started.elapsed().as_secs_f64());
    }
    print!("{}", hodei_sim::report::table(&reports));
    Ok(())
}
