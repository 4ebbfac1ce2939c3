//! The field gate's default thresholds against real smear fields (BCCD): a
//! sharp field passes and a defocused one does not; the same field moved by up
//! to a third is recognised, other fields are not taken for it.

use leukoscope::hw::source::shift_image;
use leukoscope::vision::gating::{focus, GateParams, Thumb};

mod common;

fn fields() -> Vec<image::RgbImage> {
    let paths = common::bccd_field_paths();
    paths.iter().step_by(12).take(30).map(|p| leukoscope::input::load_rgb(p).expect("field")).collect()
}

#[test]
fn default_thresholds_separate_real_fields() {
    let p = GateParams::default();
    let imgs = fields();
    assert_eq!(imgs.len(), 30);
    for (i, img) in imgs.iter().enumerate() {
        let sharp = focus(img);
        let defocused = focus(&image::imageops::blur(img, 2.5));
        assert!(sharp > p.min_focus * 1.2, "field {i}: sharp focus {sharp} too close to {}", p.min_focus);
        assert!(defocused < p.min_focus, "field {i}: defocused (sigma 2.5) focus {defocused} passes");

        let t = Thumb::of(img);
        for frac in [0.05f32, 0.15, 0.3] {
            let dx = (frac * img.width() as f32) as i64;
            let (d, _) = t.best_shift_diff(&Thumb::of(&shift_image(img, dx, dx / 3)), p.same_field_overlap);
            assert!(d <= p.same_field_max_diff, "field {i} moved by {frac}: difference {d} not taken for the same");
        }
        let other = &imgs[(i + 1) % imgs.len()];
        let (d, _) = t.best_shift_diff(&Thumb::of(other), p.same_field_overlap);
        assert!(d > p.same_field_max_diff * 1.2, "fields {i} and {}: difference {d} too close", i + 1);
    }
}
