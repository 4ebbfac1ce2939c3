//! The differential count: per-class counts, blasts and abnormal cells with
//! exact 95% intervals, and the threshold flag.

use crate::classify::model::{ModelCard, Prediction};
use crate::classify::stats::clopper_pearson;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What one classified object counts as.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Call {
    /// A leukocyte of a known class.
    Cell { code: String, blast: bool, abnormal: bool },
    /// A leukocyte the model is not confident about: counted in the total, never
    /// forced into a class. `best` is the most likely class, for the reviewer.
    Unidentified {
        best: String,
        #[serde(default)]
        why: Doubt,
    },
    /// Not a leukocyte (e.g. a platelet the detector let through): not counted.
    NotLeukocyte { code: String },
}

impl Call {
    /// Why the cell is unidentified; `None` for any other call.
    pub fn doubt(&self) -> Option<Doubt> {
        match self {
            Call::Unidentified { why, .. } => Some(*why),
            _ => None,
        }
    }
}

/// Why a leukocyte is left unidentified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Doubt {
    /// Its top class is below the confidence floor.
    #[default]
    LowConfidence,
    /// The crop holds no stained nucleus (blank, uniform, debris).
    NoNucleus,
    /// Unlike the cells the model was trained on: its out-of-distribution
    /// score passes the card's limit (another optics, stain or object).
    Unfamiliar,
}

impl Doubt {
    /// The label a report gives such a cell.
    pub fn label(self) -> &'static str {
        match self {
            Doubt::LowConfidence => "Unidentified (low confidence)",
            Doubt::NoNucleus => "Unidentified (no stained nucleus)",
            Doubt::Unfamiliar => "Unidentified (unlike the training images)",
        }
    }

    /// The reason alone, e.g. "low confidence".
    pub fn reason(self) -> &'static str {
        match self {
            Doubt::LowConfidence => "low confidence",
            Doubt::NoNucleus => "no stained nucleus",
            Doubt::Unfamiliar => "unlike the training images",
        }
    }
}

/// Which classes are blasts and which are normal, and the confidence floor:
/// from the model card, blast classes overridable by configuration.
#[derive(Debug, Clone)]
pub struct CallRules {
    pub blast_classes: Vec<String>,
    pub normal_classes: Vec<String>,
    pub min_confidence: f32,
}

impl CallRules {
    pub fn from_card(card: &ModelCard) -> CallRules {
        CallRules {
            blast_classes: card.blast_classes.clone(),
            normal_classes: card.normal_classes.clone(),
            min_confidence: card.min_confidence,
        }
    }

    /// Decides what a prediction counts as. A crop without a nucleus or unlike
    /// anything trained on is never forced into a class, whatever its probabilities.
    pub fn call(&self, card: &ModelCard, pred: &Prediction) -> Call {
        let (i, conf) = pred.top();
        let class = &card.classes[i];
        let best = class.code.clone();
        if !pred.stained {
            Call::Unidentified { best, why: Doubt::NoNucleus }
        } else if card.is_unfamiliar(pred) {
            Call::Unidentified { best, why: Doubt::Unfamiliar }
        } else if !class.leukocyte {
            Call::NotLeukocyte { code: best }
        } else if conf < self.min_confidence {
            Call::Unidentified { best, why: Doubt::LowConfidence }
        } else {
            Call::Cell {
                code: class.code.clone(),
                blast: self.blast_classes.contains(&class.code),
                abnormal: !self.normal_classes.contains(&class.code),
            }
        }
    }
}

/// A running differential count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Differential {
    pub by_class: BTreeMap<String, u64>,
    pub unidentified: u64,
    pub blasts: u64,
    pub abnormal: u64,
    pub not_leukocytes: u64,
    pub cut_by_border: u64,
    /// Unidentified because unlike the training images or without a nucleus.
    pub unfamiliar: u64,
}

impl Differential {
    pub fn add(&mut self, call: &Call) {
        match call {
            Call::Cell { code, blast, abnormal } => {
                *self.by_class.entry(code.clone()).or_default() += 1;
                self.blasts += *blast as u64;
                self.abnormal += *abnormal as u64;
            }
            Call::Unidentified { why, .. } => {
                self.unidentified += 1;
                self.unfamiliar += (*why != Doubt::LowConfidence) as u64;
            }
            Call::NotLeukocyte { .. } => self.not_leukocytes += 1,
        }
    }

    /// Undo of [`add`](Self::add) (the appliance's "undo last field").
    pub fn remove(&mut self, call: &Call) {
        match call {
            Call::Cell { code, blast, abnormal } => {
                if let Some(n) = self.by_class.get_mut(code) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.by_class.remove(code);
                    }
                }
                self.blasts = self.blasts.saturating_sub(*blast as u64);
                self.abnormal = self.abnormal.saturating_sub(*abnormal as u64);
            }
            Call::Unidentified { why, .. } => {
                self.unidentified = self.unidentified.saturating_sub(1);
                self.unfamiliar = self.unfamiliar.saturating_sub((*why != Doubt::LowConfidence) as u64);
            }
            Call::NotLeukocyte { .. } => self.not_leukocytes = self.not_leukocytes.saturating_sub(1),
        }
    }

    /// Leukocytes counted: classified plus unidentified. Unidentified cells stay
    /// in the denominator so that doubt never inflates the blast percentage.
    pub fn cells(&self) -> u64 {
        self.by_class.values().sum::<u64>() + self.unidentified
    }

    pub fn summary(&self, threshold_percent: f64) -> Summary {
        let n = self.cells();
        let pct = |k: u64| if n == 0 { 0.0 } else { 100.0 * k as f64 / n as f64 };
        let ci = |k: u64| {
            let (lo, hi) = clopper_pearson(k, n, 0.95);
            [100.0 * lo, 100.0 * hi]
        };
        let blast_percent = pct(self.blasts);
        Summary {
            cells: n,
            blasts: self.blasts,
            blast_percent,
            ci95: ci(self.blasts),
            by_class: self.by_class.clone(),
            unidentified: self.unidentified,
            unfamiliar: self.unfamiliar,
            unfamiliar_percent: pct(self.unfamiliar),
            abnormal: self.abnormal,
            abnormal_percent: pct(self.abnormal),
            abnormal_ci95: ci(self.abnormal),
            threshold_percent,
            flag: n > 0 && blast_percent >= threshold_percent,
            not_counted: NotCounted { not_leukocytes: self.not_leukocytes, cut_by_border: self.cut_by_border },
        }
    }
}

/// The count as reported (percentages in 0..100).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub cells: u64,
    pub blasts: u64,
    pub blast_percent: f64,
    pub ci95: [f64; 2],
    pub by_class: BTreeMap<String, u64>,
    pub unidentified: u64,
    /// Of the unidentified: unlike the training images, or without a nucleus.
    /// Many of them mean the calls of this sample are unreliable.
    pub unfamiliar: u64,
    pub unfamiliar_percent: f64,
    /// Cells of types not normally seen in peripheral blood (blasts included).
    pub abnormal: u64,
    pub abnormal_percent: f64,
    pub abnormal_ci95: [f64; 2],
    pub threshold_percent: f64,
    /// Blast percentage at or above the threshold.
    pub flag: bool,
    pub not_counted: NotCounted,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NotCounted {
    pub not_leukocytes: u64,
    pub cut_by_border: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(code: &str, blast: bool, abnormal: bool) -> Call {
        Call::Cell { code: code.into(), blast, abnormal }
    }

    #[test]
    fn twenty_blasts_of_a_hundred() {
        let mut d = Differential::default();
        for _ in 0..20 {
            d.add(&cell("MYO", true, true));
        }
        for _ in 0..75 {
            d.add(&cell("NGS", false, false));
        }
        for _ in 0..5 {
            d.add(&Call::Unidentified { best: "LYT".into(), why: Doubt::LowConfidence });
        }
        d.add(&Call::NotLeukocyte { code: "PLT".into() });
        let s = d.summary(20.0);
        assert_eq!((s.cells, s.blasts, s.unidentified), (100, 20, 5));
        assert!((s.blast_percent - 20.0).abs() < 1e-9);
        assert!((s.ci95[0] - 12.67).abs() < 0.01 && (s.ci95[1] - 29.18).abs() < 0.01, "{:?}", s.ci95);
        assert!(s.flag);
        assert_eq!(s.not_counted.not_leukocytes, 1);
        assert!(!d.summary(25.0).flag);
        d.remove(&cell("MYO", true, true));
        let s = d.summary(20.0);
        assert_eq!((s.cells, s.blasts, s.by_class["MYO"]), (99, 19, 19));
        assert!(!s.flag);
    }

    #[test]
    fn empty_count_is_not_flagged() {
        let s = Differential::default().summary(0.0);
        assert_eq!(s.cells, 0);
        assert!(!s.flag);
        assert_eq!(s.ci95, [0.0, 100.0]);
    }

    /// Unfamiliar and nucleus-less cells are unidentified, counted in the
    /// denominator and tallied apart from low-confidence ones; undo takes them back.
    #[test]
    fn unfamiliar_cells_are_unidentified_and_tallied() {
        let mut d = Differential::default();
        let unid = |why| Call::Unidentified { best: "MYO".into(), why };
        for why in [Doubt::Unfamiliar, Doubt::NoNucleus, Doubt::LowConfidence] {
            d.add(&unid(why));
        }
        d.add(&cell("NGS", false, false));
        let s = d.summary(20.0);
        assert_eq!((s.cells, s.unidentified, s.unfamiliar, s.blasts), (4, 3, 2, 0));
        assert!((s.unfamiliar_percent - 50.0).abs() < 1e-9);
        d.remove(&unid(Doubt::Unfamiliar));
        d.remove(&unid(Doubt::LowConfidence));
        let s = d.summary(20.0);
        assert_eq!((s.cells, s.unidentified, s.unfamiliar), (2, 1, 1));
    }

    /// The card's rule: no nucleus first, then out-of-distribution, then the
    /// confidence floor; the warning only from the card's share on.
    #[test]
    fn calls_follow_the_cards_abstention_rules() {
        let mut card = ModelCard::load(&crate::classify::model::default_card_path()).expect("shipped card");
        card.ood = Some(crate::classify::model::OodSpec { max_energy: -3.0, warn_percent: 10.0 });
        let rules = CallRules::from_card(&card);
        let i = card.class_index("MYO").expect("MYO");
        let mut probs = vec![0.0; card.classes.len()];
        probs[i] = 0.9;
        let pred = |stained, energy| Prediction { probs: probs.clone(), stained, energy };
        let why = |c: Call| c.doubt();
        assert_eq!(why(rules.call(&card, &pred(false, -9.0))), Some(Doubt::NoNucleus));
        assert_eq!(why(rules.call(&card, &pred(true, -2.0))), Some(Doubt::Unfamiliar));
        assert!(matches!(rules.call(&card, &pred(true, -9.0)), Call::Cell { blast: true, .. }));
        assert_eq!(card.unfamiliar_warning(9.9), None);
        assert!(card.unfamiliar_warning(10.0).is_some_and(|w| w.contains("review every cell")));
        card.ood = None;
        assert!(matches!(rules.call(&card, &pred(true, 50.0)), Call::Cell { .. }));
        assert_eq!(card.unfamiliar_warning(100.0), None);
    }
}
