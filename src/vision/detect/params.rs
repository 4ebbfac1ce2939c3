//! The detector's settings (`[detect]` in the configuration): every length
//! in µm, every threshold an optical density, so one set serves any camera
//! once the scale is known.

use crate::config::InvalidValue;
use serde::{Deserialize, Serialize};

/// Every tunable of the detector. Defaults were tuned on BCCD `trainval`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectParams {
    /// Scale (µm per input pixel) used when none is given and the field's red
    /// cells cannot tell. Default: BCCD's camera (red cells ~103 px).
    pub fallback_um_per_px: f32,
    /// Median red-cell diameter (µm) that the scale estimate assumes.
    pub rbc_diameter_um: f32,
    /// Ratio of the red cells' size as annotated (bounding box) to twice their
    /// inscribed radius: touching and non-round cells have smaller inscribed
    /// circles than their extent.
    pub rbc_extent_per_inscribed: f32,
    /// The scale is estimated on a copy whose longer side is about this many
    /// pixels (refined at a finer level when red cells come out too small).
    pub scale_side_px: u32,
    /// Fewest red cells (packed discs) that make a scale estimate.
    pub scale_min_cells: usize,
    /// Lowest green optical density that counts as a red cell when the Otsu
    /// threshold is lower (pale fields).
    pub rbc_min_od: f32,
    /// Red-cell threshold as a fraction of the Otsu threshold (glass vs cells):
    /// below 1 keeps more of the pale cell centres.
    pub rbc_otsu_fraction: f32,
    /// Largest red-cell pallor (hole in the red-cell mask) to fill, as a
    /// fraction of the image area.
    pub rbc_max_hole_fraction: f32,
    /// Packed discs keep their centres at least this fraction of the sum of
    /// their radii apart: near 1 a disc never overlaps another, so one
    /// elongated cell yields one disc, not a row of them.
    pub rbc_disc_spacing: f32,
    /// Discs smaller than this fraction of the area-weighted median disc are
    /// gap fillers, not cells, and left out of the median.
    pub rbc_min_disc_fraction: f32,
    /// Resolution of the working copy: at least this many pixels per µm.
    pub work_px_per_um: f32,
    /// Weight of blue optical density subtracted from red optical density in
    /// the nucleus stain signal.
    pub blue_weight: f32,
    /// Stain signal (optical density) above which a pixel is nucleus.
    pub nucleus_od: f32,
    /// Faint fields (soft focus, nuclei stained magenta rather than blue):
    /// the nucleus threshold drops to this fraction of the field's strongest
    /// stain (99.7th percentile of the stain signal), never above
    /// `nucleus_od` nor below `nucleus_od_floor`. Only with a given scale
    /// (configured or calibrated): on soft fields a single field's red cells
    /// can be off several-fold, and a low threshold at a wrong scale finds
    /// leukocytes in red-cell clumps (txl/bcd tune half).
    pub nucleus_od_fraction: f32,
    /// Lowest nucleus threshold a faint field gets.
    pub nucleus_od_floor: f32,
    /// The nucleus threshold is never below the median stain signal of the
    /// field's stained pixels (mostly red cells) plus this: red cells that
    /// take up the nuclear stain (lavender in some CellaVision fields) are
    /// then never nuclei, while nuclei stain far above them. Where red cells
    /// are pink (stain signal below zero) it changes nothing.
    pub nucleus_over_cells_od: f32,
    /// A second nucleus signal, for stains where nuclei come out magenta or
    /// pink and the main signal (red minus blue optical density) barely
    /// moves: a pixel is nucleus when its colour is unlike the field's red
    /// cells by more than this optical density (the part orthogonal to the
    /// red cells' colour) and it is darker than them in green (see
    /// `nucleus_unlike_darker`). Red cells of any colour, and their
    /// overlaps, stay near 0. 0 switches it off.
    pub nucleus_unlike_cells_od: f32,
    /// The second signal counts only pixels whose green optical density is
    /// at least this many times the red cells' median: pale cytoplasm and
    /// smudges, also unlike red cells, are lighter than a nucleus.
    pub nucleus_unlike_darker: f32,
    /// Radius (µm) of the opening that removes specks from the nucleus mask.
    pub open_um: f32,
    /// Fragments of the nucleus mask smaller than this (µm²) are ignored.
    pub min_fragment_um2: f32,
    /// Nucleus fragments closer than this (µm, pixel to pixel) are lobes of
    /// one nucleus.
    pub lobe_merge_um: f32,
    /// A merged nucleus is never longer than this (µm): beyond it, nearby
    /// fragments belong to different (touching) leukocytes.
    pub max_nucleus_um: f32,
    /// Nuclei smaller than this (µm²) are platelets or debris (BCCD platelets
    /// measure up to ~12 µm², small lymphocyte nuclei from ~24 µm²).
    pub min_nucleus_area_um2: f32,
    /// Cell box = nucleus box grown by this much (µm) on every side.
    pub box_margin_um: f32,
    /// A detection whose nucleus is shorter than this (µm, longest side) and
    /// which the classifier takes for a non-leukocyte (a platelet) is not
    /// counted; a larger one is counted as unidentified. Two signals must agree:
    /// a large platelet on a field whose scale came out too coarse passes the
    /// area floor, but not both. Small lymphocyte nuclei measure from ~6.5 µm.
    pub platelet_veto_um: f32,
    /// A field whose own red-cell scale differs from the configured or
    /// calibrated one by more than this fraction is flagged (`scale.disagrees`:
    /// a field whose red cells mislead, or a wrong objective); all fields'
    /// red cells together, by the same fraction, flag a wrong objective
    /// (`summary.scale.check`).
    pub scale_disagree_fraction: f32,
}

impl Default for DetectParams {
    fn default() -> Self {
        DetectParams {
            fallback_um_per_px: 0.073,
            rbc_diameter_um: 7.5,
            rbc_extent_per_inscribed: 1.2,
            scale_side_px: 320,
            scale_min_cells: 4,
            rbc_min_od: 0.08,
            rbc_otsu_fraction: 0.7,
            rbc_max_hole_fraction: 0.02,
            rbc_disc_spacing: 1.0,
            rbc_min_disc_fraction: 0.6,
            work_px_per_um: 1.7,
            blue_weight: 1.0,
            nucleus_od: 0.12,
            nucleus_od_fraction: 0.35,
            nucleus_od_floor: 0.04,
            nucleus_over_cells_od: 0.08,
            nucleus_unlike_cells_od: 0.16,
            nucleus_unlike_darker: 1.5,
            open_um: 0.3,
            min_fragment_um2: 1.0,
            lobe_merge_um: 2.5,
            max_nucleus_um: 18.0,
            min_nucleus_area_um2: 15.0,
            box_margin_um: 1.3,
            platelet_veto_um: 6.0,
            scale_disagree_fraction: 0.25,
        }
    }
}

impl DetectParams {
    /// Every setting a number the detector can work with: finite and not
    /// negative, sizes and scales above zero, the working resolution and
    /// the scale copy bounded (they set how much memory a field takes).
    /// The error names the `[detect]` key.
    pub fn validate(&self) -> Result<(), InvalidValue> {
        let p = self;
        let bad = |key, value: String, why| Err(InvalidValue::new(key, value, why));
        let positive = [
            ("detect.fallback_um_per_px", p.fallback_um_per_px),
            ("detect.rbc_diameter_um", p.rbc_diameter_um),
            ("detect.rbc_extent_per_inscribed", p.rbc_extent_per_inscribed),
            ("detect.rbc_disc_spacing", p.rbc_disc_spacing),
            ("detect.work_px_per_um", p.work_px_per_um),
            ("detect.max_nucleus_um", p.max_nucleus_um),
        ];
        let not_negative = [
            ("detect.rbc_min_od", p.rbc_min_od),
            ("detect.rbc_otsu_fraction", p.rbc_otsu_fraction),
            ("detect.rbc_max_hole_fraction", p.rbc_max_hole_fraction),
            ("detect.rbc_min_disc_fraction", p.rbc_min_disc_fraction),
            ("detect.blue_weight", p.blue_weight),
            ("detect.nucleus_od", p.nucleus_od),
            ("detect.nucleus_od_fraction", p.nucleus_od_fraction),
            ("detect.nucleus_od_floor", p.nucleus_od_floor),
            ("detect.nucleus_over_cells_od", p.nucleus_over_cells_od),
            ("detect.nucleus_unlike_cells_od", p.nucleus_unlike_cells_od),
            ("detect.nucleus_unlike_darker", p.nucleus_unlike_darker),
            ("detect.open_um", p.open_um),
            ("detect.min_fragment_um2", p.min_fragment_um2),
            ("detect.lobe_merge_um", p.lobe_merge_um),
            ("detect.min_nucleus_area_um2", p.min_nucleus_area_um2),
            ("detect.box_margin_um", p.box_margin_um),
            ("detect.platelet_veto_um", p.platelet_veto_um),
            ("detect.scale_disagree_fraction", p.scale_disagree_fraction),
        ];
        if let Some((k, v)) = positive.iter().find(|(_, v)| !(v.is_finite() && *v > 0.0)) {
            return bad(k, v.to_string(), "must be a positive number");
        }
        if let Some((k, v)) = not_negative.iter().find(|(_, v)| !(v.is_finite() && *v >= 0.0)) {
            return bad(k, v.to_string(), "must be a number, 0 or more");
        }
        if p.fallback_um_per_px >= 10.0 {
            return bad("detect.fallback_um_per_px", p.fallback_um_per_px.to_string(), "must be below 10");
        }
        if p.work_px_per_um > 20.0 {
            return bad("detect.work_px_per_um", p.work_px_per_um.to_string(), "must be at most 20");
        }
        if !(16..=8192).contains(&p.scale_side_px) {
            return bad("detect.scale_side_px", p.scale_side_px.to_string(), "must be between 16 and 8192");
        }
        if p.scale_min_cells == 0 {
            return bad("detect.scale_min_cells", "0".into(), "must be at least 1");
        }
        Ok(())
    }
}
