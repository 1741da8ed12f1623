//! A deterministic synthetic demonstration zone: roadside units at intersections with their
//! radars, and vehicles driving a ring road. The same seed and start time give byte-identical
//! payloads.
//!
//! Per tick (1 / hz): each RSU sends an RSM of the participants crossing its intersection
//! (even RSUs in the OpenV2X std integer shape, odd ones in the DAWNLINE float shape), an SSM
//! sharing the same participants (CSAE std; a traffic cone too for the first 20 s of every
//! minute), a PSM for each pedestrian and cyclist among them (CSAE std), and its radar a track
//! frame; each vehicle a BSM (std integers or vendor floats, alternating), and instrumented
//! vehicles (every second one) their state and perceived objects. Every 10 s (and at its first
//! tick) each RSU sends the CSAE MAP of its intersection; every 10 ticks SPAT from a 60 s
//! signal cycle; every 100 a heartbeat; every 300 (from tick 5) an RSI event.
//!
//! The messages agree with each other: one geometry (`local`) places participants, MAP
//! lanes and the cone; the RSM, SSM, PSM and radar of a tick are written from one `Seen`
//! per participant; the RSM lane is a MAP lane id; MAP's intersection ids and phase ids are
//! SPAT's.

use serde_json::json;

/// Zone origin (Beijing Yizhuang, roughly).
const LAT0: f64 = 39.7850;
const LON0: f64 = 116.5050;
const M_PER_DEG_LAT: f64 = 111_320.0;

fn m_per_deg_lon() -> f64 {
    M_PER_DEG_LAT * LAT0.to_radians().cos()
}

/// xorshift64*: small, fast and fully determined by its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Debug, Clone)]
struct Participant {
    id: u32,
    /// 1 motor, 2 non-motor, 3 pedestrian.
    ptc_type: u8,
    /// Approach: 0 from south going north, 1 west->east, 2 north->south, 3 east->west.
    approach: u8,
    speed: f64,
    /// Metres along the 400 m path at tick 0.
    offset: f64,
    lane: u8,
    size: (f64, f64, f64),
}

#[derive(Debug, Clone)]
struct Rsu {
    esn: String,
    /// 1-based, the intersection id in SPAT.
    number: usize,
    lat: f64,
    lon: f64,
    participants: Vec<Participant>,
    /// Seconds into the signal cycle at tick 0.
    cycle_offset: f64,
}

#[derive(Debug, Clone)]
struct Vehicle {
    id: String,
    radius: f64,
    speed: f64,
    phase: f64,
    msg_cnt: u8,
}

/// The simulated zone.
#[derive(Debug, Clone)]
pub struct Zone {
    rsus: Vec<Rsu>,
    vehicles: Vec<Vehicle>,
    hz: f64,
    start_ms: i64,
    /// Ticks between two MAPs of an RSU.
    map_every: u64,
}

/// One message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimMessage {
    pub topic: String,
    pub payload: Vec<u8>,
}

const PATH_M: f64 = 400.0;
const CYCLE_S: f64 = 60.0;
/// Lanes each way on every road through an intersection, counted from the median.
const LANES: u8 = 3;
const LANE_WIDTH_M: f64 = 3.5;
/// SPAT phases: phase 1 lets the north-south movements go, phase 2 the east-west ones.
const PHASE_NS: u8 = 1;
const PHASE_EW: u8 = 2;
/// CSAE region of every node id (the SPAT and MAP intersection ids).
const REGION: u8 = 1;
/// Over the air a MAP goes out about once a second; to the cloud, where the geometry changes
/// only with road works, RSUs send it rarely. 10 s costs little (one 16 KB message per RSU)
/// and still lets a consumer that starts late find the lanes soon.
const MAP_PERIOD_S: f64 = 10.0;
/// Stop lines, metres from the intersection's centre: the six lanes' box (10.5 m from the
/// centreline) plus a crosswalk.
const STOP_LINE_M: f64 = 15.0;
/// Distances along an approach of the MAP's centreline points, in the direction of travel
/// (CSAE lists a lane's points from upstream to downstream): lanes entering the intersection
/// end at the stop line, lanes leaving it start at the far one; both reach the end of the
/// participants' path.
const INGRESS_ALONG: [f64; 5] = [-200.0, -150.0, -100.0, -50.0, -STOP_LINE_M];
const EGRESS_ALONG: [f64; 5] = [STOP_LINE_M, 50.0, 100.0, 150.0, 200.0];
/// Every lane allows going straight only (bit 0 of AllowedManeuvers): no participant turns.
const STRAIGHT: &str = "100000000000";
/// A traffic cone stands on the outer edge line of one approach's kerb lane, 40 m before the
/// stop line, for the first 20 s of every minute: some SSMs carry an obstacle, most do not.
const CONE_CYCLE_S: f64 = 60.0;
const CONE_OUT_S: f64 = 20.0;
const CONE_BEFORE_STOP_M: f64 = 40.0;

impl Zone {
    pub fn new(seed: u64, rsus: usize, vehicles: usize, hz: f64, start_ms: i64) -> Zone {
        let mut rng = Rng::new(seed);
        let rsus = (0..rsus)
            .map(|i| {
                let n = 6 + (rng.next_u64() % 10) as usize;
                let participants = (0..n)
                    .map(|k| {
                        let roll = rng.range(0.0, 1.0);
                        let (ptc_type, speed, size) = if roll < 0.7 {
                            (1, rng.range(6.0, 15.0), (1.8, rng.range(4.2, 5.2), 1.5))
                        } else if roll < 0.9 {
                            (2, rng.range(3.0, 6.0), (0.6, 1.8, 1.7))
                        } else {
                            (3, rng.range(1.0, 1.8), (0.5, 0.5, 1.7))
                        };
                        Participant {
                            id: (i * 1000 + k) as u32 + 1,
                            ptc_type,
                            approach: (rng.next_u64() % 4) as u8,
                            speed,
                            offset: rng.range(0.0, PATH_M),
                            lane: 1 + (rng.next_u64() % 3) as u8,
                            size,
                        }
                    })
                    .collect();
                Rsu {
                    esn: format!("RSU{:04}", i + 1),
                    number: i + 1,
                    lat: LAT0 + 0.006 * (i / 4) as f64,
                    lon: LON0 + 0.008 * (i % 4) as f64,
                    participants,
                    cycle_offset: rng.range(0.0, CYCLE_S),
                }
            })
            .collect();
        let vehicles = (0..vehicles)
            .map(|j| Vehicle {
                id: format!("veh-{:04}", j + 1),
                radius: 300.0 + 15.0 * j as f64,
                speed: rng.range(8.0, 16.0),
                phase: rng.range(0.0, std::f64::consts::TAU),
                msg_cnt: (rng.next_u64() % 128) as u8,
            })
            .collect();
        let hz = hz.max(0.1);
        Zone {
            rsus,
            vehicles,
            hz,
            start_ms,
            map_every: ((MAP_PERIOD_S * hz).round() as u64).max(1),
        }
    }

    /// Prefixes every RSU esn and vehicle id, so that two simulators publishing to one broker
    /// do not collide. The payloads change only where they carry those ids.
    pub fn with_id_prefix(mut self, prefix: &str) -> Zone {
        for rsu in &mut self.rsus {
            rsu.esn.insert_str(0, prefix);
        }
        for v in &mut self.vehicles {
            v.id.insert_str(0, prefix);
        }
        self
    }

    /// Messages per tick, on average (for rates and counts).
    pub fn messages_per_tick(&self) -> f64 {
        let r = self.rsus.len() as f64;
        let v = self.vehicles.len() as f64;
        let vrus = self
            .rsus
            .iter()
            .flat_map(|r| &r.participants)
            .filter(|p| p.ptc_type != 1)
            .count() as f64;
        3.0 * r
            + vrus
            + v
            + 2.0 * (v / 2.0).ceil()
            + r / self.map_every as f64
            + r / 10.0
            + r / 100.0
            + r / 300.0
    }

    /// Every message of tick `n`, in a fixed order.
    pub fn tick(&mut self, n: u64) -> Vec<SimMessage> {
        let t = n as f64 / self.hz;
        let now_ms = self.start_ms + (t * 1000.0).round() as i64;
        let sec_mark = now_ms.rem_euclid(60_000);
        let mut out = Vec::new();
        for (i, rsu) in self.rsus.iter().enumerate() {
            if n.is_multiple_of(self.map_every) {
                out.push(map(rsu, n / self.map_every, now_ms));
            }
            let seen: Vec<Seen> = rsu.participants.iter().map(|p| seen(rsu, p, t)).collect();
            out.push(rsm(rsu, i, &seen, now_ms, sec_mark));
            out.push(radar(rsu, &seen, now_ms));
            out.push(ssm(rsu, &seen, n, t, sec_mark));
            // PSMs at the RSM's rate: the RSU relays each pedestrian and cyclist as it perceives
            // them, so a PSM and the RSM row of one tick describe the same instant; a lower rate
            // would save little (a few people per RSU).
            for s in seen.iter().filter(|s| s.p.ptc_type != 1) {
                out.push(psm(rsu, s, n, sec_mark));
            }
            if n.is_multiple_of(10) {
                out.push(spat(rsu, t, now_ms));
            }
            if n.is_multiple_of(100) {
                out.push(heartbeat(rsu, now_ms, n));
            }
            if n % 300 == 5 {
                out.push(rsi(rsu, now_ms, n));
            }
        }
        for (j, v) in self.vehicles.iter_mut().enumerate() {
            let angle = v.phase + v.speed * t / v.radius;
            let (east, north) = (v.radius * angle.cos(), v.radius * angle.sin());
            let (lat, lon) = (LAT0 + north / M_PER_DEG_LAT, LON0 + east / m_per_deg_lon());
            // Counter-clockwise on the ring: direction of travel, in map and compass terms.
            let theta = (angle + std::f64::consts::FRAC_PI_2).rem_euclid(std::f64::consts::TAU);
            let heading = (90.0 - theta.to_degrees()).rem_euclid(360.0);
            v.msg_cnt = (v.msg_cnt + 1) % 128;
            out.push(if j.is_multiple_of(2) {
                SimMessage {
                    topic: format!("V2X/OBU/{}/BSM/UP", v.id),
                    payload: json!({
                        "msgCnt": v.msg_cnt, "id": v.id, "secMark": sec_mark,
                        "pos": {"lat": (lat * 1e7).round() as i64, "long": (lon * 1e7).round() as i64, "elev": 310},
                        "transmission": 2, "speed": (v.speed / 0.02).round() as i64,
                        "heading": ((heading / 0.0125).round() as i64) % 28800, "angle": 0,
                        "accelSet": {"long": 0, "lat": 0, "vert": 0, "yaw": 0},
                        "size": {"width": 185, "length": 480, "height": 30},
                        "vehicleClass": {"classification": 10}
                    })
                    .to_string()
                    .into_bytes(),
                }
            } else {
                SimMessage {
                    topic: format!("v2x/v1/obu/{}/bsm/up/float", v.id),
                    payload: json!({
                        "msgCnt": v.msg_cnt, "id": v.id, "timeStamp": now_ms,
                        "pos": {"lat": lat, "lon": lon, "elev": 31.0},
                        "speed": v.speed, "heading": heading,
                        "size": {"width": 1.85, "length": 4.8, "height": 1.5}
                    })
                    .to_string()
                    .into_bytes(),
                }
            });
            if j.is_multiple_of(2) {
                out.push(SimMessage {
                    topic: format!("V2X/VEH/{}/STATE/UP", v.id),
                    payload: json!({
                        "timestamp": now_ms, "pos": {"lat": lat, "lon": lon, "alt": 31.0},
                        "heading": heading, "speed": v.speed,
                        "vel": {"east": -v.speed * angle.sin(), "north": v.speed * angle.cos(), "up": 0.0},
                        "accel": {"x": 0.0, "y": v.speed * v.speed / v.radius, "z": 9.81},
                        "yaw_rate": (v.speed / v.radius).to_degrees(),
                        "steering": {"angle": (2.8 / v.radius).atan().to_degrees() * 15.0},
                        "throttle": 12.0, "brake": 0.0, "gear": "D", "driving_mode": "auto",
                        "wheel_speed": {"fl": v.speed, "fr": v.speed, "rl": v.speed, "rr": v.speed},
                        "gnss": {"solution": "rtk_fixed", "sats": 24}
                    })
                    .to_string()
                    .into_bytes(),
                });
                // Two objects ahead of the vehicle, in the zone's map frame (metres east/north).
                let objects: Vec<_> = (0..2)
                    .map(|k| {
                        let d = 20.0 + 15.0 * k as f64;
                        json!({
                            "id": k + 1, "type": if k == 0 { "vehicle" } else { "bicycle" },
                            "sub_type": if k == 0 { "car" } else { "cyclist" },
                            "position": {"x": east + d * theta.cos(), "y": north + d * theta.sin(), "z": 0.0},
                            "theta": theta, "velocity": {"x": v.speed * theta.cos(), "y": v.speed * theta.sin(), "z": 0.0},
                            "size": {"length": if k == 0 { 4.6 } else { 1.8 }, "width": if k == 0 { 1.9 } else { 0.6 }, "height": 1.5},
                            "confidence": 0.9, "tracking_time": t
                        })
                    })
                    .collect();
                out.push(SimMessage {
                    topic: format!("V2X/VEH/{}/OBJECTS/UP", v.id),
                    payload: json!({"timestamp": now_ms, "sensor": "fused", "frame_id": "map", "objects": objects})
                        .to_string()
                        .into_bytes(),
                });
            }
        }
        out
    }
}

/// A participant as the RSU perceives it at one tick. Every message about it in that tick
/// (RSM, radar, SSM, PSM) is written from this one value, so they cannot disagree.
struct Seen<'a> {
    p: &'a Participant,
    lat: f64,
    lon: f64,
    heading: f64,
    /// Metres along its approach, negative before the intersection's centre.
    along: f64,
    /// The MAP lane it is in (see [`ingress_lane`]).
    lane: u8,
}

fn seen<'a>(rsu: &Rsu, p: &'a Participant, t: f64) -> Seen<'a> {
    let along = (p.offset + p.speed * t).rem_euclid(PATH_M) - PATH_M / 2.0;
    let (east, north, heading) = local(p.approach, lane_centre(p.lane), along);
    let (lat, lon) = absolute(rsu, east, north);
    // Before the centre it is in its approach's lane, after it in the lane leaving the box.
    let lane = if along < 0.0 {
        ingress_lane(p.approach, p.lane)
    } else {
        egress_lane(p.approach, p.lane)
    };
    Seen {
        p,
        lat,
        lon,
        heading,
        along,
        lane,
    }
}

/// Metres east and north of the intersection's centre, and the compass heading, of the point
/// `along` metres along `approach` (0 from the south going north, 1 west->east, 2
/// north->south, 3 east->west; negative before the centre) and `right` metres to the right of
/// the road's centreline. The one geometry of participants, MAP lanes and obstacles.
fn local(approach: u8, right: f64, along: f64) -> (f64, f64, f64) {
    match approach {
        0 => (right, along, 0.0),
        1 => (along, -right, 90.0),
        2 => (-right, -along, 180.0),
        _ => (-along, right, 270.0),
    }
}

/// Offset of lane `lane` (1 next to the median) from the road's centreline.
fn lane_centre(lane: u8) -> f64 {
    LANE_WIDTH_M * (lane as f64 - 0.5)
}

fn absolute(rsu: &Rsu, east: f64, north: f64) -> (f64, f64) {
    (
        rsu.lat + north / M_PER_DEG_LAT,
        rsu.lon + east / m_per_deg_lon(),
    )
}

/// MAP lane ids, unique within an intersection's MAP: the tens digit is the leg (1 south, 2
/// west, 3 north, 4 east), the units 1..3 the lanes entering the intersection on that leg
/// and 4..6 the lanes leaving it, each counted from the median.
fn ingress_lane(approach: u8, lane: u8) -> u8 {
    10 * ingress_leg(approach) + lane
}

fn egress_lane(approach: u8, lane: u8) -> u8 {
    10 * egress_leg(approach) + LANES + lane
}

/// The leg (1 south, 2 west, 3 north, 4 east) traffic of `approach` comes in on.
fn ingress_leg(approach: u8) -> u8 {
    approach + 1
}

/// The leg it leaves on: straight across.
fn egress_leg(approach: u8) -> u8 {
    (approach + 2) % 4 + 1
}

/// The SPAT phase that controls the movements of `approach`.
fn phase(approach: u8) -> u8 {
    if approach.is_multiple_of(2) {
        PHASE_NS
    } else {
        PHASE_EW
    }
}

fn e7(deg: f64) -> i64 {
    (deg * 1e7).round() as i64
}

fn rsm(rsu: &Rsu, i: usize, seen: &[Seen], now_ms: i64, sec_mark: i64) -> SimMessage {
    if i.is_multiple_of(2) {
        let participants: Vec<_> = seen
            .iter()
            .map(|s| {
                let p = s.p;
                json!({
                    "ptcType": p.ptc_type, "ptcId": p.id, "global_track_id": format!("{}-{}", rsu.esn, p.id),
                    "source": 7, "secMark": sec_mark,
                    "pos": {"lat": e7(s.lat), "lon": e7(s.lon)},
                    "speed": speed_units(p.speed), "heading": heading_units(s.heading),
                    "lane": s.lane,
                    "size": size_units(p.size)
                })
            })
            .collect();
        SimMessage {
            topic: format!("V2X/RSU/{}/RSM/UP", rsu.esn),
            payload: json!({"content": {"rsms": [{
                "refPos": {"lat": e7(rsu.lat), "lon": e7(rsu.lon)},
                "participants": participants}]}})
            .to_string()
            .into_bytes(),
        }
    } else {
        let names = ["unknown", "motor", "non-motor", "pedestrian"];
        let content: Vec<_> = seen
            .iter()
            .map(|s| {
                let p = s.p;
                json!({
                    "ptcType": names[p.ptc_type as usize], "ptcId": p.id,
                    "global_track_id": format!("{}-{}", rsu.esn, p.id), "timeStamp": now_ms,
                    "secMark": sec_mark, "pos_lat": s.lat, "pos_lon": s.lon, "heading": s.heading,
                    "source": 7, "width": p.size.0, "length": p.size.1, "height": p.size.2,
                    "speed": p.speed, "lane": format!("lane_{}", s.lane)
                })
            })
            .collect();
        SimMessage {
            topic: format!("V2X/RSU/{}/RSM/UP/DAWNLINE", rsu.esn),
            payload: json!([{"dev_pos": {"lat": rsu.lat, "lon": rsu.lon}, "content": content}])
                .to_string()
                .into_bytes(),
        }
    }
}

fn radar(rsu: &Rsu, seen: &[Seen], now_ms: i64) -> SimMessage {
    let targets: Vec<_> = seen
        .iter()
        .filter(|s| s.p.ptc_type == 1)
        .map(|s| {
            let p = s.p;
            json!({
                "targetId": p.id, "targetType": 3, "latitude": s.lat, "longitude": s.lon,
                // km/h, as the real radar sends it; lanes as the radar counts them.
                "speed": -p.speed * 3.6, "headingAngle": s.heading, "acceleration": 0.0, "laneNo": p.lane,
                "targetLength": p.size.1, "targetWidth": p.size.0, "targetHeight": p.size.2,
                "confidenceLevel": 100, "rcs": 3_214_468_640u64, "height": 0.0
            })
        })
        .collect();
    SimMessage {
        topic: format!("V2X/RADAR/{}R/TRACK/UP", rsu.esn),
        payload:
            json!({"timeStamp": now_ms.to_string(), "number": targets.len(), "targets": targets})
                .to_string()
                .into_bytes(),
    }
}

/// Node id of the far end of leg `leg` (1..4) of intersection `number`, where the zone's
/// paths begin and end: apart from the intersection ids (1..N) for up to 5,500 RSUs.
fn leg_end(number: usize, leg: u8) -> i64 {
    10_000 + 10 * number as i64 + leg as i64
}

/// A CSAE PositionOffsetLLV choice: the smallest `position-LLn` that holds the offset from
/// the node's reference point (1e-7 degree), as an encoder picks it.
fn offset_ll(lat_e7: i64, lon_e7: i64, ref_lat_e7: i64, ref_lon_e7: i64) -> serde_json::Value {
    const LIMITS: [i64; 6] = [2047, 8191, 32767, 131_071, 2_097_151, 8_388_607];
    let (lat, lon) = (lat_e7 - ref_lat_e7, lon_e7 - ref_lon_e7);
    let mut choice = serde_json::Map::new();
    match LIMITS
        .iter()
        .position(|m| lat.abs() <= *m && lon.abs() <= *m)
    {
        Some(k) => choice.insert(
            format!("position-LL{}", k + 1),
            json!({"lon": lon, "lat": lat}),
        ),
        None => choice.insert(
            "position-LatLon".into(),
            json!({"lon": lon_e7, "lat": lat_e7}),
        ),
    };
    serde_json::Value::Object(choice)
}

/// The CSAE MAP of an RSU's intersection, in the lanes its participants drive. The
/// intersection node has one link per leg with the three lanes entering on it, each
/// connecting straight across under the phase of its approach; four leg-end nodes carry the
/// links leaving the intersection, whose lanes those connections name.
fn map(rsu: &Rsu, count: u64, now_ms: i64) -> SimMessage {
    let node_id = |id: i64| json!({"region": REGION, "id": id});
    let ref_pos = |lat: f64, lon: f64| json!({"lat": e7(lat), "long": e7(lon), "elevation": 310});
    // `origin`: the node whose refPos the points are offsets from (east, north in metres).
    let lane = |id: u8, approach: u8, lane: u8, alongs: &[f64], origin: (f64, f64)| {
        let (ref_lat, ref_lon) = absolute(rsu, origin.0, origin.1);
        let points: Vec<_> = alongs
            .iter()
            .map(|along| {
                let (east, north, _) = local(approach, lane_centre(lane), *along);
                let (lat, lon) = absolute(rsu, east, north);
                json!({"posOffset": {"offsetLL":
                    offset_ll(e7(lat), e7(lon), e7(ref_lat), e7(ref_lon))}})
            })
            .collect();
        // The zone's cyclists and pedestrians use the vehicle lanes too (LaneSharing bits 3
        // individual motorized, 6 pedestrians, 7 cyclists).
        json!({"laneID": id, "laneWidth": (LANE_WIDTH_M * 100.0) as i64,
            "laneAttributes": {"shareWith": "0001001100", "laneType": {"vehicle": "00000000"}},
            "maneuvers": STRAIGHT,
            "speedLimits": [{"type": "vehicleMaxSpeed", "speed": speed_units(60.0 / 3.6)}],
            "points": points})
    };
    let link_width = (f64::from(LANES) * LANE_WIDTH_M * 100.0) as i64;
    let in_links: Vec<_> = (0..4u8)
        .map(|a| {
            let lanes: Vec<_> = (1..=LANES)
                .map(|l| {
                    let mut v = lane(ingress_lane(a, l), a, l, &INGRESS_ALONG, (0.0, 0.0));
                    v["connectsTo"] = json!([{
                        "remoteIntersection": node_id(leg_end(rsu.number, egress_leg(a))),
                        "connectingLane": {"lane": egress_lane(a, l), "maneuver": STRAIGHT},
                        "phaseId": phase(a)}]);
                    v
                })
                .collect();
            let from = leg_end(rsu.number, ingress_leg(a));
            json!({"name": format!("{from}-{}", rsu.number), "upstreamNodeId": node_id(from),
                "linkWidth": link_width, "lanes": lanes})
        })
        .collect();
    let mut nodes = vec![json!({"name": format!("intersection {}", rsu.number),
        "id": node_id(rsu.number as i64), "refPos": ref_pos(rsu.lat, rsu.lon), "inLinks": in_links})];
    for a in 0..4u8 {
        let id = leg_end(rsu.number, egress_leg(a));
        let (east, north, _) = local(a, 0.0, PATH_M / 2.0);
        let (lat, lon) = absolute(rsu, east, north);
        let lanes: Vec<_> = (1..=LANES)
            .map(|l| lane(egress_lane(a, l), a, l, &EGRESS_ALONG, (east, north)))
            .collect();
        nodes.push(json!({"name": format!("intersection {} leg {}", rsu.number, egress_leg(a)),
            "id": node_id(id), "refPos": ref_pos(lat, lon),
            "inLinks": [{"name": format!("{}-{id}", rsu.number), "upstreamNodeId": node_id(rsu.number as i64),
                "linkWidth": link_width, "lanes": lanes}]}));
    }
    SimMessage {
        topic: format!("V2X/RSU/{}/MAP/UP", rsu.esn),
        // CSAE MapData.timeStamp is a MinuteOfTheYear.
        payload: json!({"msgCnt": count % 128, "timeStamp": moy(now_ms), "nodes": nodes})
            .to_string()
            .into_bytes(),
    }
}

/// CSAE 157 SSM: the RSU shares every participant of its RSM (offsets from sensorPos, the
/// RSM's refPos) and, while it is out, the cone.
fn ssm(rsu: &Rsu, seen: &[Seen], n: u64, t: f64, sec_mark: i64) -> SimMessage {
    let (ref_lat, ref_lon) = (e7(rsu.lat), e7(rsu.lon));
    let participants: Vec<_> = seen
        .iter()
        .map(|s| {
            let p = s.p;
            // DetectedPTCType: car, cyclist, pedestrian.
            let detected = match p.ptc_type {
                1 => 3,
                2 => 7,
                _ => 10,
            };
            // Tracked since it (re)entered its path, or since the RSU started.
            let tracking = ((s.along + PATH_M / 2.0) / p.speed).min(t).floor() as i64;
            json!({"ptc": {"ptcType": p.ptc_type, "ptcId": p.id, "source": 7, "secMark": sec_mark,
                    "pos": {"offsetLL": offset_ll(e7(s.lat), e7(s.lon), ref_lat, ref_lon)},
                    "speed": speed_units(p.speed), "heading": heading_units(s.heading),
                    "size": size_units(p.size)},
                "detectedPTCType": detected, "typeConfidence": 180, "tracking": tracking})
        })
        .collect();
    // "RSU" in ASCII, then the intersection number: 8 octets as hex text.
    let id = format!("{:016X}", 0x5253_5500_0000_0000u64 | rsu.number as u64);
    let mut v = json!({"msgCnt": n % 128, "id": id, "equipmentType": 1, "secMark": sec_mark,
        "sensorPos": {"lat": ref_lat, "long": ref_lon}, "participants": participants});
    let out_for = t.rem_euclid(CONE_CYCLE_S);
    if out_for < CONE_OUT_S {
        let approach = (rsu.number % 4) as u8;
        let (east, north, heading) = local(
            approach,
            f64::from(LANES) * LANE_WIDTH_M,
            -STOP_LINE_M - CONE_BEFORE_STOP_M,
        );
        let (lat, lon) = absolute(rsu, east, north);
        // ObstacleType 6 traffic cone; sizes in 10 cm. Its id is apart from the
        // participants' (1000 per RSU, from 1).
        v["obstacles"] = json!([{"obsType": 6, "objTypeConfidence": 160,
            "obsId": rsu.number * 1000 - 1, "source": 7, "secMark": sec_mark,
            "pos": {"offsetLL": offset_ll(e7(lat), e7(lon), ref_lat, ref_lon)},
            "speed": 0, "heading": heading_units(heading),
            "size": {"width": 4, "length": 4, "height": 7}, "tracking": out_for.floor() as i64}]);
    }
    SimMessage {
        topic: format!("V2X/RSU/{}/SSM/UP", rsu.esn),
        payload: v.to_string().into_bytes(),
    }
}

/// CSAE 157 PSM the RSU sends for a pedestrian or cyclist it perceives. Every person is
/// tracked from the RSU's first tick (the zone's participants never leave, they wrap around
/// their path), so each one's msgCnt counts from 0 then and all move in step: the
/// collector's message-counter check, per source (the RSU), sees no false gaps.
fn psm(rsu: &Rsu, s: &Seen, n: u64, sec_mark: i64) -> SimMessage {
    let p = s.p;
    // PersonalDeviceUserType 1 pedestrian (HumanPropelledType 2 on foot), 2 pedal cyclist
    // (1 other types).
    let (basic_type, human) = if p.ptc_type == 3 { (1, 2) } else { (2, 1) };
    let payload = json!({"msgCnt": n % 128, "id": format!("{:016X}", p.id), "secMark": sec_mark,
        "pos": {"lat": e7(s.lat), "long": e7(s.lon)},
        // 0.5 m accuracy (0.05 m units), no orientation.
        "posAccuracy": {"semiMajor": 10, "semiMinor": 10, "orientation": 65535},
        "speed": speed_units(p.speed), "heading": heading_units(s.heading),
        "accelSet": {"long": 0, "lat": 0, "vert": 0, "yaw": 0},
        // Half the larger horizontal size, in 0.1 m.
        "overallRadius": (p.size.0.max(p.size.1) * 5.0).round() as i64,
        "non-motorData": {"basicType": basic_type, "propulsion": {"human": human}}});
    SimMessage {
        topic: format!("V2X/RSU/{}/PSM/UP", rsu.esn),
        payload: payload.to_string().into_bytes(),
    }
}

fn spat(rsu: &Rsu, t: f64, now_ms: i64) -> SimMessage {
    // Phase 1 (north-south): green 27 s, yellow 3 s, red 30 s; phase 2 the opposite.
    let c = (t + rsu.cycle_offset).rem_euclid(CYCLE_S);
    let state = |c: f64| -> (u8, f64) {
        if c < 27.0 {
            (6, 27.0 - c)
        } else if c < 30.0 {
            (7, 30.0 - c)
        } else {
            (3, CYCLE_S - c)
        }
    };
    let phases: Vec<_> = [(PHASE_NS, c), (PHASE_EW, (c + 30.0).rem_euclid(CYCLE_S))]
        .iter()
        .map(|(id, c)| {
            let (light, left) = state(*c);
            json!({"id": id, "phaseStates": [{"light": light, "timing": {"counting": {
                "startTime": 0, "likelyEndTime": (left * 10.0).round() as i64}}}]})
        })
        .collect();
    SimMessage {
        topic: format!("V2X/RSU/{}/SPAT/UP", rsu.esn),
        payload: json!({"msgCnt": 1, "moy": moy(now_ms), "timeStamp": now_ms.rem_euclid(60_000),
            "intersections": [{"intersectionId": {"region": REGION, "id": rsu.number},
            "status": "0000000000000000", "phases": phases}]})
        .to_string()
        .into_bytes(),
    }
}

/// MinuteOfTheYear of `now_ms`.
fn moy(now_ms: i64) -> i64 {
    (now_ms / 60_000)
        - chrono::DateTime::from_timestamp_millis(now_ms)
            .and_then(|d| {
                use chrono::Datelike;
                chrono::NaiveDate::from_ymd_opt(d.year(), 1, 1)
            })
            .map(|d| {
                d.and_hms_opt(0, 0, 0)
                    .unwrap_or_default()
                    .and_utc()
                    .timestamp()
                    / 60
            })
            .unwrap_or(0)
}

/// CSAE integer units: speed 0.02 m/s, heading 0.0125 degree, size cm (height 5 cm).
fn speed_units(mps: f64) -> i64 {
    (mps / 0.02).round() as i64
}

fn heading_units(deg: f64) -> i64 {
    (deg / 0.0125).round() as i64
}

fn size_units((width, length, height): (f64, f64, f64)) -> serde_json::Value {
    json!({"width": (width * 100.0).round() as i64, "length": (length * 100.0).round() as i64,
        "height": (height / 0.05).round() as i64})
}

fn heartbeat(rsu: &Rsu, now_ms: i64, n: u64) -> SimMessage {
    SimMessage {
        topic: "V2X/RSU/HB/UP".into(),
        payload: json!({"rsuEsn": rsu.esn, "timestamp": now_ms, "protocolVersion": "v1",
            "status": "normal", "cpu": 20.0 + (n % 7) as f64, "mem": 41.5, "disk": 12.0,
            "temperature": 46.0, "uptime": n as f64 / 10.0})
        .to_string()
        .into_bytes(),
    }
}

fn rsi(rsu: &Rsu, now_ms: i64, n: u64) -> SimMessage {
    SimMessage {
        topic: format!("V2X/RSU/{}/RSI/UP", rsu.esn),
        payload: json!({"msgCnt": (n % 128), "timeStamp": now_ms,
            "refPos": {"lat": (rsu.lat * 1e7).round() as i64, "lon": (rsu.lon * 1e7).round() as i64},
            "rtes": [{"rteId": n, "eventType": 401, "eventSource": 5,
                "eventPos": {"lat": (rsu.lat * 1e7).round() as i64 + 300, "lon": (rsu.lon * 1e7).round() as i64},
                "eventRadius": 300, "description": "road works"}],
            "rtss": [{"rtsId": 1, "signType": 38,
                "signPos": {"lat": (rsu.lat * 1e7).round() as i64, "lon": (rsu.lon * 1e7).round() as i64 + 200}}]})
        .to_string()
        .into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::decode::Outcome;
    use arrow::array::{Array, AsArray, RecordBatch};
    use arrow::datatypes::{Float64Type, Int32Type, Int64Type};
    use std::collections::{BTreeMap, BTreeSet, HashMap};

    const START: i64 = 1_764_320_400_000; // 2025-11-28T09:00:00Z

    /// Every message of `ticks`, decoded by the real decoder (nothing may be quarantined),
    /// per tick: table name -> its rows.
    fn decoded(z: &mut Zone, ticks: std::ops::Range<u64>) -> Vec<HashMap<String, RecordBatch>> {
        let mut d = crate::pipeline::build_decoder(&Config::default()).unwrap();
        ticks
            .map(|n| {
                let recv_us = (START + n as i64 * 100) * 1000 + 20_000;
                for m in z.tick(n) {
                    if let Outcome::Quarantined(r) = d.decode(&m.topic, &m.payload, recv_us) {
                        panic!("{} quarantined ({r})", m.topic);
                    }
                }
                let mut by_table: HashMap<String, Vec<RecordBatch>> = HashMap::new();
                for b in d.take_batches() {
                    by_table
                        .entry(b.table.to_string())
                        .or_default()
                        .push(b.batch);
                }
                by_table
                    .into_iter()
                    .map(|(t, bs)| {
                        let all = arrow::compute::concat_batches(&bs[0].schema(), &bs).unwrap();
                        (t, all)
                    })
                    .collect()
            })
            .collect()
    }

    fn f64s(b: &RecordBatch, col: &str) -> Vec<Option<f64>> {
        let c = b.column_by_name(col).unwrap();
        c.as_primitive::<Float64Type>().iter().collect()
    }

    fn i32s(b: &RecordBatch, col: &str) -> Vec<Option<i32>> {
        let c = b.column_by_name(col).unwrap();
        c.as_primitive::<Int32Type>().iter().collect()
    }

    fn i64s(b: &RecordBatch, col: &str) -> Vec<Option<i64>> {
        let c = b.column_by_name(col).unwrap();
        c.as_primitive::<Int64Type>().iter().collect()
    }

    fn strs(b: &RecordBatch, col: &str) -> Vec<Option<String>> {
        let c = b.column_by_name(col).unwrap();
        c.as_string::<i32>()
            .iter()
            .map(|s| s.map(str::to_string))
            .collect()
    }

    /// A list column, null lists as empty ones.
    fn lists<T: arrow::datatypes::ArrowPrimitiveType>(
        b: &RecordBatch,
        col: &str,
    ) -> Vec<Vec<T::Native>> {
        let list = b.column_by_name(col).unwrap().as_list::<i32>();
        (0..list.len())
            .map(|i| match list.is_valid(i) {
                true => list.value(i).as_primitive::<T>().iter().flatten().collect(),
                false => Vec::new(),
            })
            .collect()
    }

    fn str_lists(b: &RecordBatch, col: &str) -> Vec<Vec<String>> {
        let list = b.column_by_name(col).unwrap().as_list::<i32>();
        (0..list.len())
            .map(|i| {
                let v = list.value(i);
                v.as_string::<i32>()
                    .iter()
                    .flatten()
                    .map(str::to_string)
                    .collect()
            })
            .collect()
    }

    /// Metres east and north of `origin` (equirectangular on the mean earth radius: distances
    /// of a few metres come out within a fraction of a percent, plenty for a 0.5 m bound).
    fn metres(origin: (f64, f64), p: (f64, f64)) -> (f64, f64) {
        const M_PER_DEG: f64 = 6_371_008.8 * std::f64::consts::PI / 180.0;
        (
            (p.1 - origin.1) * M_PER_DEG * origin.0.to_radians().cos(),
            (p.0 - origin.0) * M_PER_DEG,
        )
    }

    /// Distance of `p` from the segment `a`-`b`, all (east, north) metres.
    fn off_segment(a: (f64, f64), b: (f64, f64), p: (f64, f64)) -> f64 {
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let len2 = dx * dx + dy * dy;
        let u = if len2 == 0.0 {
            0.0
        } else {
            (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0)
        };
        (p.0 - a.0 - u * dx).hypot(p.1 - a.1 - u * dy)
    }

    /// Distance of `p` from the infinite line through `a` and `b`.
    fn off_line(a: (f64, f64), b: (f64, f64), p: (f64, f64)) -> f64 {
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        ((p.0 - a.0) * dy - (p.1 - a.1) * dx).abs() / dx.hypot(dy)
    }

    /// The decoded MAP lanes: (source, lane id) -> (intersection id, centreline (lat, lon)).
    type Lanes = BTreeMap<(String, i32), (i32, Vec<(f64, f64)>)>;

    fn map_lanes(b: &RecordBatch) -> Lanes {
        let (lat, lon) = (
            lists::<Float64Type>(b, "node_lat_deg"),
            lists::<Float64Type>(b, "node_lon_deg"),
        );
        let sources = strs(b, "source_id");
        let (ids, nodes) = (i32s(b, "lane_id"), i32s(b, "intersection_id"));
        (0..b.num_rows())
            .map(|r| {
                let points = lat[r].iter().copied().zip(lon[r].iter().copied()).collect();
                (
                    (sources[r].clone().unwrap(), ids[r].unwrap()),
                    (nodes[r].unwrap(), points),
                )
            })
            .collect()
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let run = |seed| {
            let mut z = Zone::new(seed, 3, 4, 10.0, START);
            (0..50).flat_map(|n| z.tick(n)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn id_prefix_renames_every_source_and_nothing_else() {
        let run = |prefix: &str| {
            let mut z = Zone::new(7, 3, 4, 10.0, START).with_id_prefix(prefix);
            (0..320).flat_map(|n| z.tick(n)).collect::<Vec<_>>()
        };
        let plain = run("");
        let prefixed = run("x1-");
        assert_eq!(prefixed, run("x1-"), "same seed and prefix, same bytes");
        assert_eq!(plain.len(), prefixed.len());
        let router = crate::route::Router::new("/", &crate::route::builtin_routes()).unwrap();
        let source = |m: &SimMessage| {
            let text = String::from_utf8_lossy(&m.payload);
            match router.route(&m.topic).unwrap().source_id {
                Some(id) => id.to_string(),
                // Heartbeats name their unit in the payload.
                None => serde_json::from_str::<serde_json::Value>(&text).unwrap()["rsuEsn"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            }
        };
        for (a, b) in plain.iter().zip(&prefixed) {
            assert_eq!(format!("x1-{}", source(a)), source(b), "{}", b.topic);
            // Only the ids differ: removing the prefix gives the unprefixed message back.
            let strip = |s: &str| s.replace("x1-", "");
            assert_eq!(a.topic, strip(&b.topic));
            assert_eq!(
                String::from_utf8_lossy(&a.payload),
                strip(&String::from_utf8_lossy(&b.payload))
            );
        }
    }

    #[test]
    fn every_simulated_message_decodes_and_every_kind_appears() {
        let mut d = crate::pipeline::build_decoder(&Config::default()).unwrap();
        let mut z = Zone::new(1, 4, 6, 10.0, START);
        let mut kinds = std::collections::BTreeSet::new();
        let mut messages = 0;
        for n in 0..320 {
            let recv_us = (START + n as i64 * 100) * 1000 + 20_000;
            for m in z.tick(n) {
                messages += 1;
                match d.decode(&m.topic, &m.payload, recv_us) {
                    Outcome::Filed { kind, rows } => {
                        assert!(rows > 0, "{} gave no rows", m.topic);
                        kinds.insert(d.kinds()[kind].schema.kind.clone());
                    }
                    Outcome::Quarantined(r) => panic!(
                        "{} quarantined ({r}): {}",
                        m.topic,
                        String::from_utf8_lossy(&m.payload)
                    ),
                }
            }
            d.take_batches();
        }
        assert!(messages > 6000, "{messages}");
        assert_eq!(kinds.len(), 11, "{kinds:?}");
        // Per source (BSM per vehicle, PSM per RSU) the message counters never jump.
        assert_eq!(d.sequence_gaps().total_missed, 0);
    }

    #[test]
    fn map_lanes_are_where_the_participants_drive() {
        // 30 s: the first MAP of each RSU and 300 RSM frames, participants on most lanes.
        let frames = decoded(&mut Zone::new(1, 4, 0, 10.0, START), 0..300);
        let map = &frames[0]["map_lane"];
        // Per RSU: 12 lanes entering its intersection, 12 leaving it on the four legs.
        assert_eq!(map.num_rows(), 4 * 24);
        let lanes = map_lanes(map);
        assert_eq!(lanes.len(), 4 * 24, "lane ids unique within a MAP");
        let ref_of: HashMap<String, (f64, f64)> = strs(map, "source_id")
            .into_iter()
            .zip(
                f64s(map, "ref_lat_deg")
                    .into_iter()
                    .zip(f64s(map, "ref_lon_deg")),
            )
            .zip(i32s(map, "intersection_id"))
            .filter(|(_, id)| id.unwrap() < 10_000)
            .map(|((s, (lat, lon)), _)| (s.unwrap(), (lat.unwrap(), lon.unwrap())))
            .collect();
        assert_eq!(ref_of.len(), 4);

        // Every RSM row names a lane of its RSU's MAP and, outside the intersection's box,
        // lies on that lane's centreline; per lane, the path of one participant (the line
        // through its first and last positions on the lane) runs through every MAP node.
        // (source, lane) -> participant id -> its positions on that lane.
        type Paths = BTreeMap<(String, i32), BTreeMap<i64, Vec<(f64, f64)>>>;
        let mut paths: Paths = BTreeMap::new();
        let mut rows = 0;
        for f in &frames {
            let rsm = &f["rsm_participant"];
            let (lat, lon) = (f64s(rsm, "lat_deg"), f64s(rsm, "lon_deg"));
            let (src, lane, id) = (
                strs(rsm, "source_id"),
                strs(rsm, "lane"),
                i64s(rsm, "ptc_id"),
            );
            for r in 0..rsm.num_rows() {
                let src = src[r].clone().unwrap();
                // Std units send the id, DAWNLINE ones `lane_<id>`.
                let lane_id: i32 = lane[r]
                    .as_deref()
                    .unwrap()
                    .trim_start_matches("lane_")
                    .parse()
                    .unwrap();
                let key = (src.clone(), lane_id);
                let (_, nodes) = lanes
                    .get(&key)
                    .unwrap_or_else(|| panic!("{key:?} not in the MAP"));
                let origin = ref_of[&src];
                let p = metres(origin, (lat[r].unwrap(), lon[r].unwrap()));
                if p.0.abs().max(p.1.abs()) < STOP_LINE_M {
                    continue; // crossing the box, between two lanes
                }
                let nodes: Vec<_> = nodes.iter().map(|n| metres(origin, *n)).collect();
                let off = nodes
                    .windows(2)
                    .map(|w| off_segment(w[0], w[1], p))
                    .fold(f64::INFINITY, f64::min);
                assert!(
                    off < 0.5,
                    "{key:?} participant {:?} {off:.3} m off its lane",
                    id[r]
                );
                paths
                    .entry(key)
                    .or_default()
                    .entry(id[r].unwrap())
                    .or_default()
                    .push(p);
                rows += 1;
            }
        }
        assert!(rows > 10_000, "{rows}");
        let mut checked = 0;
        for (key, by_participant) in &paths {
            let Some(track) = by_participant.values().find(|t| t.len() >= 20) else {
                continue;
            };
            let (a, b) = (track[0], track[track.len() - 1]);
            let origin = ref_of[&key.0];
            for n in &lanes[key].1 {
                let off = off_line(a, b, metres(origin, *n));
                assert!(off < 0.5, "{key:?}: node {n:?} {off:.3} m off the path");
            }
            checked += 1;
        }
        assert!(checked >= 30, "only {checked} lanes had a participant");
    }

    #[test]
    fn map_connections_are_controlled_by_the_simulated_spat_phases() {
        let frames = decoded(&mut Zone::new(1, 4, 0, 10.0, START), 0..11);
        let map = &frames[0]["map_lane"];
        let mut phases = BTreeSet::new();
        for f in &frames {
            if let Some(spat) = f.get("spat_phase") {
                let (src, node, phase) = (
                    strs(spat, "source_id"),
                    i32s(spat, "intersection_id"),
                    i32s(spat, "phase_id"),
                );
                for r in 0..spat.num_rows() {
                    phases.insert((src[r].clone().unwrap(), node[r].unwrap(), phase[r].unwrap()));
                }
            }
        }
        assert_eq!(
            phases.len(),
            4 * 2,
            "two phases per intersection: {phases:?}"
        );
        let lanes = map_lanes(map);
        let (src, node, lane) = (
            strs(map, "source_id"),
            i32s(map, "intersection_id"),
            i32s(map, "lane_id"),
        );
        let groups = lists::<Int32Type>(map, "connects_to_signal_group");
        let to_lane = lists::<Int32Type>(map, "connects_to_lane");
        let to_node = lists::<Int32Type>(map, "connects_to_intersection");
        let maneuvers = str_lists(map, "maneuvers");
        let mut controlling = BTreeSet::new();
        let mut connections = 0;
        for r in 0..map.num_rows() {
            let src = src[r].clone().unwrap();
            assert_eq!(maneuvers[r], ["straight"]);
            assert_eq!(groups[r].len(), to_lane[r].len());
            for ((group, egress), egress_node) in groups[r].iter().zip(&to_lane[r]).zip(&to_node[r])
            {
                let key = (src.clone(), node[r].unwrap(), *group);
                assert!(phases.contains(&key), "{key:?} is no simulated SPAT phase");
                controlling.insert(key.clone());
                // The connection names a lane of the MAP, at the node it says, straight ahead:
                // the lane leaving continues the line of the lane entering.
                let (entering, leaving) = (
                    &lanes[&(src.clone(), lane[r].unwrap())].1,
                    &lanes[&(src.clone(), *egress)],
                );
                assert_eq!(leaving.0, *egress_node);
                let origin = entering[0];
                let (a, b) = (
                    metres(origin, entering[0]),
                    metres(origin, entering[entering.len() - 1]),
                );
                for n in &leaving.1 {
                    assert!(off_line(a, b, metres(origin, *n)) < 0.5);
                }
                // Phase 1 lets the north-south lanes go (constant longitude), phase 2 the
                // east-west ones (constant latitude).
                let along_lon = entering.iter().all(|n| (n.1 - entering[0].1).abs() < 1e-6);
                let along_lat = entering.iter().all(|n| (n.0 - entering[0].0).abs() < 1e-6);
                assert_eq!(
                    (along_lon, along_lat),
                    (*group == 1, *group == 2),
                    "{key:?}"
                );
                connections += 1;
            }
        }
        assert_eq!(
            connections,
            4 * 12,
            "one connection per lane entering an intersection"
        );
        assert_eq!(controlling, phases, "every SPAT phase controls lanes");
        assert!(f64s(map, "lane_width_m").iter().all(|w| *w == Some(3.5)));
        assert!(
            lists::<Float64Type>(map, "speed_limit_mps")
                .iter()
                .all(|v| v == &[16.66])
        );
    }

    /// One perceived participant as a decoded row gives it.
    #[derive(Debug, Clone, PartialEq)]
    struct Row {
        ptc_type: Option<String>,
        lat: f64,
        lon: f64,
        speed: f64,
        heading: f64,
        size: [f64; 3],
    }

    /// Rows of `b` (those `keep` keeps) by (source, id), the type from `type_col`; sizes
    /// are 0 in a table without them.
    fn rows_by_id(
        b: &RecordBatch,
        ids: &[i64],
        type_col: &str,
        keep: impl Fn(usize) -> bool,
    ) -> BTreeMap<(String, i64), Row> {
        let src = strs(b, "source_id");
        let ty = strs(b, type_col);
        let cols = [
            "lat_deg",
            "lon_deg",
            "speed_mps",
            "heading_deg",
            "width_m",
            "length_m",
            "height_m",
        ];
        let v: Vec<Vec<Option<f64>>> = cols
            .iter()
            .map(|c| match b.column_by_name(c) {
                Some(_) => f64s(b, c),
                None => vec![Some(0.0); b.num_rows()],
            })
            .collect();
        (0..b.num_rows())
            .filter(|r| keep(*r))
            .map(|r| {
                let f = |c: usize| v[c][r].unwrap();
                let row = Row {
                    ptc_type: ty[r].clone(),
                    lat: f(0),
                    lon: f(1),
                    speed: f(2),
                    heading: f(3),
                    size: [f(4), f(5), f(6)],
                };
                ((src[r].clone().unwrap(), ids[r]), row)
            })
            .collect()
    }

    #[test]
    fn ssm_objects_and_psms_of_a_tick_are_its_rsm_participants() {
        // 25 s: the cone is out for the first 20 s, and msgCnt wraps at 128.
        let frames = decoded(&mut Zone::new(1, 4, 0, 10.0, START), 0..250);
        let lanes = map_lanes(&frames[0]["map_lane"]);
        let mut last_cnt: HashMap<(String, i64), i32> = HashMap::new();
        let mut psms = 0;
        for (n, f) in frames.iter().enumerate() {
            let rsm = &f["rsm_participant"];
            let profile = strs(rsm, "profile");
            let dawnline: BTreeSet<String> = strs(rsm, "source_id")
                .into_iter()
                .zip(&profile)
                .filter(|(_, p)| p.as_deref() != Some("std"))
                .filter_map(|(s, _)| s)
                .collect();
            let ids: Vec<i64> = i64s(rsm, "ptc_id").into_iter().flatten().collect();
            let rsm = rows_by_id(rsm, &ids, "ptc_type", |_| true);
            // DAWNLINE units send floats where SSM and PSM send the CSAE integers: equal to
            // the integer unit's half. Std units send the same integers: equal.
            let same = |key: &(String, i64), a: &Row, b: &Row, what: &str| {
                let (deg, speed, size) = if dawnline.contains(&key.0) {
                    (1e-6, 0.01, 0.025)
                } else {
                    (1e-9, 1e-9, 1e-9)
                };
                assert!(
                    (a.lat - b.lat).abs() < deg && (a.lon - b.lon).abs() < deg,
                    "{what} {key:?}: {a:?} {b:?}"
                );
                assert!(
                    (a.speed - b.speed).abs() < speed,
                    "{what} {key:?}: {a:?} {b:?}"
                );
                assert!(
                    (a.heading - b.heading).abs() < 1e-9,
                    "{what} {key:?}: {a:?} {b:?}"
                );
                for k in 0..3 {
                    assert!(
                        (a.size[k] - b.size[k]).abs() < size,
                        "{what} {key:?}: {a:?} {b:?}"
                    );
                }
            };

            let ssm = &f["ssm_object"];
            let class = strs(ssm, "object_class");
            let types = strs(ssm, "object_type");
            let ids: Vec<i64> = i64s(ssm, "object_id").into_iter().flatten().collect();
            let shared = rows_by_id(ssm, &ids, "ptc_type", |r| {
                class[r].as_deref() == Some("participant")
            });
            assert_eq!(
                shared.keys().collect::<Vec<_>>(),
                rsm.keys().collect::<Vec<_>>(),
                "tick {n}"
            );
            for (key, row) in &shared {
                let seen = &rsm[key];
                assert_eq!(row.ptc_type, seen.ptc_type);
                same(key, row, seen, "ssm");
            }
            for r in (0..ssm.num_rows()).filter(|r| class[*r].as_deref() == Some("participant")) {
                let ptc = strs(ssm, "ptc_type")[r].clone().unwrap();
                let detected = match ptc.as_str() {
                    "motor" => "car",
                    "non_motor" => "cyclist",
                    _ => "pedestrian",
                };
                assert_eq!(types[r].as_deref(), Some(detected));
            }

            // The cone: one per RSU while it is out, on the outer edge of a kerb lane.
            let cones: Vec<usize> = (0..ssm.num_rows())
                .filter(|r| class[*r].as_deref() == Some("obstacle"))
                .collect();
            assert_eq!(cones.len(), if n < 200 { 4 } else { 0 }, "tick {n}");
            let (src, lat, lon) = (
                strs(ssm, "source_id"),
                f64s(ssm, "lat_deg"),
                f64s(ssm, "lon_deg"),
            );
            for r in cones {
                assert_eq!(types[r].as_deref(), Some("traffic_cone"));
                assert_eq!(f64s(ssm, "speed_mps")[r], Some(0.0));
                let src = src[r].clone().unwrap();
                let at = (lat[r].unwrap(), lon[r].unwrap());
                let kerb_lanes = lanes
                    .iter()
                    .filter(|((s, id), _)| *s == src && id % 10 == 3);
                let off = kerb_lanes
                    .map(|(_, (_, nodes))| {
                        let p = metres(nodes[0], at);
                        let nodes: Vec<_> = nodes.iter().map(|x| metres(nodes[0], *x)).collect();
                        nodes
                            .windows(2)
                            .map(|w| off_segment(w[0], w[1], p))
                            .fold(f64::INFINITY, f64::min)
                    })
                    .fold(f64::INFINITY, f64::min);
                assert!(
                    (off - LANE_WIDTH_M / 2.0).abs() < 0.1,
                    "cone {off:.2} m from a kerb lane's centre"
                );
            }

            // A PSM for each pedestrian and cyclist of the RSM, its counter one up.
            let psm = &f["psm"];
            let ids: Vec<i64> = strs(psm, "person_id")
                .iter()
                .map(|s| i64::from_str_radix(s.as_deref().unwrap(), 16).unwrap())
                .collect();
            let psm_rows = rows_by_id(psm, &ids, "basic_type", |_| true);
            let (cnt, psm_src) = (i32s(psm, "msg_cnt"), strs(psm, "source_id"));
            let vrus: Vec<_> = rsm
                .iter()
                .filter(|(_, r)| r.ptc_type.as_deref() != Some("motor"))
                .collect();
            assert_eq!(
                psm_rows.keys().collect::<Vec<_>>(),
                vrus.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
                "tick {n}"
            );
            for (key, seen) in vrus {
                let person = &psm_rows[key];
                let who = match seen.ptc_type.as_deref() {
                    Some("pedestrian") => "pedestrian",
                    _ => "pedal_cyclist",
                };
                assert_eq!(person.ptc_type.as_deref(), Some(who));
                // A PSM has no size.
                let person = Row {
                    ptc_type: seen.ptc_type.clone(),
                    size: seen.size,
                    ..person.clone()
                };
                same(key, &person, seen, "psm");
            }
            for (r, c) in cnt.iter().enumerate() {
                let key = (psm_src[r].clone().unwrap(), ids[r]);
                let c = c.unwrap();
                if let Some(before) = last_cnt.insert(key.clone(), c) {
                    assert_eq!(c, (before + 1) % 128, "{key:?} at tick {n}");
                }
                psms += 1;
            }
        }
        assert!(
            psms > 1000 && last_cnt.len() > 4,
            "{psms} PSMs of {} people",
            last_cnt.len()
        );
    }
}
