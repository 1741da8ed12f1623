//! Positions given relative to a reference point, made absolute on the WGS-84 ellipsoid.
//!
//! Metric offsets (east, north in metres on the tangent plane at the origin) become degrees
//! through the geodesic direct problem from the origin (geographiclib: azimuth
//! `atan2(east, north)`, distance `hypot(east, north)`), and degrees become metres through the
//! inverse problem. Over the few hundred metres of an intersection the geodesic and the
//! tangent plane differ by far less than the centimetre the offsets are given in.

use geographiclib_rs::{DirectGeodesic, Geodesic, InverseGeodesic};

/// The reference point of a set of positions.
pub struct Origin {
    lat: f64,
    lon: f64,
    geodesic: Geodesic,
}

/// One absolute position with its offset from the origin.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub lat: f64,
    pub lon: f64,
    pub east: f64,
    pub north: f64,
}

impl Origin {
    pub fn new(lat: f64, lon: f64) -> Origin {
        Origin {
            lat,
            lon,
            geodesic: Geodesic::wgs84(),
        }
    }

    /// The point `east`, `north` metres from the origin.
    pub fn at_metres(&self, east: f64, north: f64) -> Point {
        let s = east.hypot(north);
        let (lat, lon) = if s == 0.0 {
            (self.lat, self.lon)
        } else {
            let azimuth = east.atan2(north).to_degrees();
            self.geodesic.direct(self.lat, self.lon, azimuth, s)
        };
        Point {
            lat,
            lon,
            east,
            north,
        }
    }

    /// The point at `lat`, `lon`, with its offset from the origin.
    pub fn at_degrees(&self, lat: f64, lon: f64) -> Point {
        let (s, azimuth, _, _): (f64, f64, f64, f64) =
            self.geodesic.inverse(self.lat, self.lon, lat, lon);
        let azimuth = azimuth.to_radians();
        Point {
            lat,
            lon,
            east: s * azimuth.sin(),
            north: s * azimuth.cos(),
        }
    }
}

/// Walks the points of one list: each offset from the previous point when chained (the
/// first from the origin; an absolute point restarts the chain), else from the origin.
pub struct Chain<'o> {
    origin: &'o Origin,
    chained: bool,
    previous: Option<Point>,
}

impl<'o> Chain<'o> {
    pub fn new(origin: &'o Origin, chained: bool) -> Chain<'o> {
        Chain {
            origin,
            chained,
            previous: None,
        }
    }

    fn keep(&mut self, p: Point) -> Point {
        self.previous = Some(p);
        p
    }

    pub fn absolute(&mut self, lat: f64, lon: f64) -> Point {
        let p = self.origin.at_degrees(lat, lon);
        self.keep(p)
    }

    pub fn metric(&mut self, east: f64, north: f64) -> Point {
        let (e0, n0) = match (self.chained, self.previous) {
            (true, Some(prev)) => (prev.east, prev.north),
            _ => (0.0, 0.0),
        };
        let p = self.origin.at_metres(e0 + east, n0 + north);
        self.keep(p)
    }

    pub fn angular(&mut self, dlat: f64, dlon: f64) -> Point {
        let (lat0, lon0) = match (self.chained, self.previous) {
            (true, Some(prev)) => (prev.lat, prev.lon),
            _ => (self.origin.lat, self.origin.lon),
        };
        let p = self.origin.at_degrees(lat0 + dlat, lon0 + dlon);
        self.keep(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metres_and_degrees_round_trip() {
        let o = Origin::new(39.5952649, -105.0914122);
        let p = o.at_metres(22.25, 8.08);
        let back = o.at_degrees(p.lat, p.lon);
        assert!((back.east - 22.25).abs() < 1e-6, "{back:?}");
        assert!((back.north - 8.08).abs() < 1e-6, "{back:?}");
        assert_eq!(o.at_metres(0.0, 0.0).lat, 39.5952649);
    }

    #[test]
    fn chained_offsets_add_up() {
        let o = Origin::new(31.0, 121.0);
        let mut c = Chain::new(&o, true);
        c.metric(10.0, 0.0);
        let p = c.metric(5.0, -3.0);
        assert!((p.east - 15.0).abs() < 1e-12 && (p.north + 3.0).abs() < 1e-12);
        let mut flat = Chain::new(&o, false);
        flat.metric(10.0, 0.0);
        assert_eq!(flat.metric(5.0, -3.0).east, 5.0);
    }
}
