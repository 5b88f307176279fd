//! The ORCA piggyback: a per-endpoint fast signal between coordinator updates.
//!
//! When a response carries the `endpoint-load-metrics-bin` trailer (an `xds.data.orca.v3.OrcaLoadReport`,
//! base64-unpadded binary metadata, prost-encoded), the endpoint's latest utilization is recorded
//! (`application_utilization` when set, else `cpu_utilization`), smoothed as `u = 0.5·new + 0.5·old`.
//!
//! The blend with the coordinator's weights: the effective weight of an endpoint is
//! `coordinator_weight × clamp(fleet_mean_u / u, 1/MAX_FACTOR, MAX_FACTOR)`, where `fleet_mean_u` is the mean
//! smoothed utilization over the endpoints that have reported since the last snapshot; endpoints without a
//! report keep factor 1. The client renormalises and republishes its picker at most every
//! `orca_refresh` (100 ms by default). Every new coordinator snapshot resets all signals, so the coordinator
//! stays the authority and ORCA only nudges (by at most ×2 / ÷2) in between; an endpoint at zero weight stays
//! at zero.

use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderMap;
use lateral_proto::orca::{ORCA_TRAILER, OrcaLoadReport};
use prost::Message;

/// The largest factor by which ORCA may raise (or lower, as its inverse) a coordinator weight.
pub const MAX_FACTOR: f64 = 2.0;

/// Utilizations below this count as this (no division by zero, no huge factor from an idle endpoint).
const MIN_UTILIZATION: f64 = 0.01;

/// One endpoint's smoothed utilization from ORCA trailers; NaN when none since the last reset.
#[derive(Debug)]
pub(crate) struct OrcaSignal {
    utilization_bits: AtomicU64,
}

impl Default for OrcaSignal {
    fn default() -> Self {
        Self {
            utilization_bits: AtomicU64::new(f64::NAN.to_bits()),
        }
    }
}

impl OrcaSignal {
    /// The smoothed utilization, if any report arrived since the last reset.
    pub(crate) fn utilization(&self) -> Option<f64> {
        let u = f64::from_bits(self.utilization_bits.load(Ordering::Relaxed));
        u.is_finite().then_some(u)
    }

    /// Records a report's utilization (racing writers may lose an update; that is fine for a hint).
    pub(crate) fn record(&self, utilization: f64) {
        let blended = match self.utilization() {
            Some(old) => 0.5 * utilization + 0.5 * old,
            None => utilization,
        };
        self.utilization_bits
            .store(blended.to_bits(), Ordering::Relaxed);
    }

    /// Forgets the signal (a new coordinator snapshot arrived).
    pub(crate) fn reset(&self) {
        self.utilization_bits
            .store(f64::NAN.to_bits(), Ordering::Relaxed);
    }
}

/// Reads the utilization from an ORCA trailer in `headers`, if there is a valid one.
pub(crate) fn utilization_from(headers: &HeaderMap) -> Option<f64> {
    let value = headers.get(ORCA_TRAILER)?;
    // Only the one header is copied; `MetadataMap` owns the base64 (unpadded or padded) decoding.
    let mut one = HeaderMap::with_capacity(1);
    one.insert(ORCA_TRAILER, value.clone());
    let bytes = tonic::metadata::MetadataMap::from_headers(one)
        .get_bin(ORCA_TRAILER)?
        .to_bytes()
        .ok()?;
    let report = OrcaLoadReport::decode(bytes).ok()?;
    let u = if report.application_utilization > 0.0 {
        report.application_utilization
    } else {
        report.cpu_utilization
    };
    (u.is_finite() && u >= 0.0).then_some(u)
}

/// Applies the blend to `weights` in place, given each endpoint's utilization (see the module docs).
/// Returns whether any factor differed from 1.
pub(crate) fn blend(weights: &mut [f64], utilizations: &[Option<f64>]) -> bool {
    let reported: Vec<f64> = utilizations
        .iter()
        .flatten()
        .map(|u| u.max(MIN_UTILIZATION))
        .collect();
    if reported.is_empty() {
        return false;
    }
    let mean = reported.iter().sum::<f64>() / reported.len() as f64;
    let mut changed = false;
    for (w, u) in weights.iter_mut().zip(utilizations) {
        if let Some(u) = u {
            let factor = (mean / u.max(MIN_UTILIZATION)).clamp(1.0 / MAX_FACTOR, MAX_FACTOR);
            if (factor - 1.0).abs() > 1e-9 {
                changed = true;
            }
            *w *= factor;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blend_is_bounded_and_keeps_zero() {
        let mut w = [0.5, 0.5, 0.0];
        blend(&mut w, &[Some(0.9), Some(0.1), Some(0.5)]);
        assert!(w[0] >= 0.25 && w[0] < 0.5);
        assert!(w[1] <= 1.0 && w[1] > 0.5);
        assert_eq!(w[2], 0.0);
    }

    #[test]
    fn trailer_round_trip() {
        let report = OrcaLoadReport {
            cpu_utilization: 0.4,
            ..Default::default()
        };
        let value = tonic::metadata::MetadataValue::from_bytes(&report.encode_to_vec());
        let mut map = tonic::metadata::MetadataMap::new();
        map.insert_bin(ORCA_TRAILER, value);
        let headers = map.into_headers();
        assert_eq!(utilization_from(&headers), Some(0.4));
    }
}
