//! Places: great-circle distance and the `--location` flag.

use crate::msg::GeoPoint;

/// Great-circle distance in km (haversine).
pub fn distance_km(a: GeoPoint, b: GeoPoint) -> f64 {
    let (la1, la2) = (f64::from(a.lat).to_radians(), f64::from(b.lat).to_radians());
    let dlat = la2 - la1;
    let dlon = (f64::from(b.lon) - f64::from(a.lon)).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + la1.cos() * la2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().min(1.0).asin()
}

/// A `--location LAT,LON` flag (the daemons' common form), with the flag named in
/// the error.
pub fn parse_location(s: &str) -> Result<GeoPoint, String> {
    let (a, b) = s
        .split_once(',')
        .ok_or_else(|| format!("--location {s}: expected LAT,LON"))?;
    match (a.trim().parse::<f32>(), b.trim().parse::<f32>()) {
        (Ok(lat), Ok(lon)) if (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon) => {
            Ok(GeoPoint { lat, lon })
        }
        _ => Err(format!(
            "--location {s}: latitude -90..90, longitude -180..180"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn munich_to_berlin_is_about_504_km() {
        let d = distance_km(
            GeoPoint {
                lat: 48.14,
                lon: 11.58,
            },
            GeoPoint {
                lat: 52.52,
                lon: 13.40,
            },
        );
        assert!((d - 504.0).abs() < 5.0, "{d}");
    }
}
